"""`ray job submit` entrypoints against a real head: `ray start --head` on 127.0.0.1, token auth on.

Everything goes through the real `ray` CLI, as a user runs it from a checkout:
    ray job submit --address http://127.0.0.1:PORT --working-dir . --runtime-env ray_jobs/runtime_env.yaml \
        -- python ray_jobs/train.py --config tiny.yaml
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from helpers import tiny_config
from ray_head import RayHead, listen_addresses

from lam.config import dump_yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("cluster_storage")


@pytest.fixture(scope="module")
def head(storage):
    # 2 training workers x 1 CPU + Ray Data read tasks + the job's driver: 6 logical CPUs.
    # LAM_STORAGE_PATH on the nodes, as cluster/*.yaml set it: the jobs' default --storage_path.
    with RayHead(num_cpus=6, extra_env={"LAM_STORAGE_PATH": str(storage)}) as h:
        yield h


def test_head_listens_on_loopback_only_and_requires_the_token(head):
    addresses = listen_addresses(head)
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in addresses), addresses
    ports = {port for _, port in addresses}
    assert int(head.gcs_address.rsplit(":", 1)[1]) in ports and int(head.dashboard_url.rsplit(":", 1)[1]) in ports
    with pytest.raises(urllib.error.HTTPError) as e:  # no token: the job API refuses
        urllib.request.urlopen(f"{head.dashboard_url}/api/jobs/", timeout=10)
    assert e.value.code in (401, 403)


def test_train_job_succeeds_and_writes_checkpoint_and_metrics(head, storage, tiny_data, tmp_path):
    # The config names no storage (./runs by default): outputs go to the cluster's LAM_STORAGE_PATH.
    cfg = tiny_config(tiny_data, "./runs", num_workers=2, cpus_per_worker=1, num_epochs=1, run_name="job-ok")
    (tmp_path / "tiny.yaml").write_text(dump_yaml(cfg))

    out = head.submit("lam-train-ok", "python", "ray_jobs/train.py", "--config", str(tmp_path / "tiny.yaml"))
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    assert head.job_status("lam-train-ok") == "SUCCEEDED"

    run = storage / "job-ok"
    checkpoints = sorted(run.glob("checkpoint_epoch*"))
    assert checkpoints and (checkpoints[-1] / "state.pt").is_file(), sorted(p.name for p in run.iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert any("train/loss" in r for r in rows) and any("val/mse_loss" in r for r in rows), rows[-1]
    assert (run / "config.yaml").is_file()


def test_job_with_bad_arguments_fails_with_a_one_line_error(head, tmp_path):
    missing = tmp_path / "no_such_data"
    out = head.submit("lam-train-bad", "python", "ray_jobs/train.py", "--data_dir", str(missing))
    assert out.returncode == 1, out.stdout + out.stderr  # `ray job submit` exits 1 when the job failed
    assert head.job_status("lam-train-bad") == "FAILED"

    logs = head.ray("job", "logs", "--address", head.dashboard_url, "lam-train-bad", timeout=60)
    assert logs.returncode == 0, logs.stderr
    errors = [line for line in logs.stdout.splitlines() if line.startswith("lam train: error:")]
    assert len(errors) == 1 and str(missing) in errors[0], logs.stdout
    assert "Traceback" not in logs.stdout
