"""`ray job submit` entrypoints against a real head: `ray start --head` on 127.0.0.1, token auth on.

Everything goes through the real `ray` CLI, as a user runs it from a checkout:
    ray job submit --address http://127.0.0.1:PORT --working-dir . --runtime-env ray_jobs/runtime_env.yaml \
        -- python ray_jobs/train.py --config tiny.yaml
(A training job that succeeds, on an autoscaling cluster that loses a node: tests/test_autoscaling.py.)
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from ray_head import RayHead, listen_addresses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    with RayHead(num_cpus=6) as h:
        yield h


def test_head_listens_on_loopback_only_and_requires_the_token(head):
    addresses = listen_addresses(head)
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in addresses), addresses
    ports = {port for _, port in addresses}
    assert int(head.gcs_address.rsplit(":", 1)[1]) in ports and int(head.dashboard_url.rsplit(":", 1)[1]) in ports
    with pytest.raises(urllib.error.HTTPError) as e:  # no token: the job API refuses
        urllib.request.urlopen(f"{head.dashboard_url}/api/jobs/", timeout=10)
    assert e.value.code in (401, 403)


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
