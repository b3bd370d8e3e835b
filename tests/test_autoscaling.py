"""The autoscaling path on one machine: cluster/local-fake-multinode.yaml with Ray's fake multi-node provider.

The head has 1 CPU; a 2-worker training job submitted with `ray job submit` needs more,
so the autoscaler must launch `ray.worker.cpu` nodes (extra raylets on this machine, all
on 127.0.0.1, token auth on) before the job can finish.
"""

from __future__ import annotations

import time

import pytest
import yaml
from helpers import ROOT, free_port, tiny_config
from ray_head import RayHead, listen_addresses

from lam.config import dump_yaml

pytestmark = pytest.mark.slow

WORKER_TYPE = "ray.worker.cpu"


@pytest.fixture
def fake_cluster(tmp_path):
    cfg = yaml.safe_load((ROOT / "cluster" / "local-fake-multinode.yaml").read_text())
    port = free_port()
    cfg["provider"]["gcs_address"] = f"127.0.0.1:{port}"  # worker nodes join our head, not 127.0.0.1:6379
    path = tmp_path / "fake-multinode.yaml"
    path.write_text(yaml.safe_dump(cfg))
    head_cpus = cfg["available_node_types"]["ray.head.default"]["resources"]["CPU"]
    with RayHead(num_cpus=head_cpus, port=port, autoscaling_config=path, extra_env={"RAY_FAKE_CLUSTER": "1"}) as head:
        yield head


def active_worker_nodes(head: RayHead) -> int:
    """How many WORKER_TYPE nodes `ray status` lists as active (it has nothing to say until the autoscaler's first report)."""
    for _ in range(30):
        out = head.ray("status", timeout=60)
        if out.returncode == 0 and "Active:" in out.stdout:
            active = out.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
            return sum(int(line.split()[0]) for line in active.splitlines() if line.strip().endswith(WORKER_TYPE))
        time.sleep(1)
    raise AssertionError(f"`ray status` shows no autoscaler report:\n{out.stdout}\n{out.stderr}")


def test_job_needing_more_cpus_than_the_head_gets_autoscaled_worker_nodes(fake_cluster, tiny_data, tmp_path):
    head = fake_cluster
    assert active_worker_nodes(head) == 0

    cfg = tiny_config(tiny_data, tmp_path / "runs", num_workers=2, cpus_per_worker=1, num_epochs=1, run_name="autoscaled")
    (tmp_path / "tiny.yaml").write_text(dump_yaml(cfg))
    out = head.submit("lam-train-autoscaled", "python", "ray_jobs/train.py", "--config", str(tmp_path / "tiny.yaml"))
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-5000:]
    assert head.job_status("lam-train-autoscaled") == "SUCCEEDED"
    assert f"of type {WORKER_TYPE}" in logs  # the autoscaler's "Adding N node(s) of type ..." event

    assert active_worker_nodes(head) >= 1  # idle_timeout_minutes: 1, so they are still there
    assert (tmp_path / "runs" / "autoscaled" / "metrics.jsonl").is_file()
    assert sorted((tmp_path / "runs" / "autoscaled").glob("checkpoint_epoch*/state.pt"))
    # the launched nodes' raylets and workers are ours too, and on loopback only
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in listen_addresses(head))
