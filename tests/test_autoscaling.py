"""The autoscaling path on one machine: cluster/local-fake-multinode.yaml with Ray's fake multi-node provider.

The head has 1 CPU; a 2-worker training job submitted with `ray job submit` needs more,
so the autoscaler must launch `ray.worker.cpu` nodes (extra raylets on this machine, all
on 127.0.0.1, token auth on) before the job can finish. Mid-run, once the first epoch's
checkpoint is registered, the node that runs a training worker is lost (its raylet killed
with SIGKILL, as when a spot node vanishes): the run goes on from that checkpoint on the
nodes that are left or that the autoscaler adds, and finishes. The job's config names no
storage, so its outputs go to the cluster's LAM_STORAGE_PATH, as cluster/*.yaml set it.
"""

from __future__ import annotations

import json
import os
import signal
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
    # The GCS declares a node dead after health_check_failure_threshold missed checks, one every
    # health_check_period_ms (3 s x 5 by default): shorter here, so that the lost node's workers
    # are restarted seconds after it goes.
    fast_death = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
    env = {"RAY_FAKE_CLUSTER": "1", "LAM_STORAGE_PATH": str(tmp_path / "cluster_storage"), **fast_death}
    with RayHead(num_cpus=head_cpus, port=port, autoscaling_config=path, extra_env=env) as head:
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


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def training_worker_raylet(head: RayHead) -> int | None:
    """The pid of the raylet of a worker node (not the head) that runs a training worker, if any:
    a Ray worker process is a child of its node's raylet, and only the head's raylet runs with
    `--head`. Read from /proc: the state API answers in seconds, and a tiny epoch is shorter."""
    for pid in head.pids():
        try:
            if not cmdline(pid).startswith("ray::RayTrainWorker"):
                continue
            raylet = parent(pid)
            command = cmdline(raylet)
        except OSError:  # exited meanwhile
            continue
        if "raylet" in command and " --head" not in command:
            return raylet
    return None


def wait_for(condition, what: str, timeout: float, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def epochs_logged(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum('"epoch"' in line for line in path.read_text().splitlines())


def test_autoscaled_job_gets_worker_nodes_and_survives_losing_one(fake_cluster, tiny_data, tmp_path):
    head = fake_cluster
    assert active_worker_nodes(head) == 0

    # Enough epochs that the run is still training when Ray has noticed the lost node (a worker
    # whose raylet dies can go on training for a few epochs of this size on data it read ahead).
    epochs = 30
    cfg = tiny_config(tiny_data, "./runs", num_workers=2, cpus_per_worker=1, num_epochs=epochs, max_failures=1,
                      run_name="autoscaled")  # ./runs, the default: the cluster's LAM_STORAGE_PATH wins
    (tmp_path / "tiny.yaml").write_text(dump_yaml(cfg))
    run_dir = tmp_path / "cluster_storage" / "autoscaled"
    out = head.submit("lam-train-autoscaled", "python", "ray_jobs/train.py", "--config", str(tmp_path / "tiny.yaml"), wait=False)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]

    # The first epoch's record is logged just before its checkpoint is reported; the node goes
    # once that checkpoint is on disk, while later epochs are still to come.
    wait_for(lambda: list(run_dir.glob("checkpoint_epoch0001/state.pt")), "the first checkpoint", timeout=300)
    victim = wait_for(lambda: training_worker_raylet(head), "a training worker on a worker node", timeout=30, poll=0.05)
    assert epochs_logged(run_dir) < epochs // 2, "the run was too far on when the node could be lost: give it more epochs"
    os.kill(victim, signal.SIGKILL)

    status = wait_for(lambda: (s := head.job_status("lam-train-autoscaled")) in ("SUCCEEDED", "FAILED", "STOPPED") and s,
                      "the job to end", timeout=400, poll=2)
    logs = head.job_logs("lam-train-autoscaled")
    assert status == "SUCCEEDED", logs[-5000:]
    assert f"of type {WORKER_TYPE}" in logs  # the autoscaler's "Adding N node(s) of type ..." event
    assert "[lam] resumed autoscaled from checkpoint_epoch" in logs, logs[-5000:]  # went on from a checkpoint, not from scratch
    assert f"epoch {epochs}/{epochs} done" in logs
    assert epochs_logged(run_dir) >= epochs
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert any("train/loss" in r for r in rows) and any("val/mse_loss" in r for r in rows), rows[-1]
    assert (run_dir / "config.yaml").is_file()

    assert active_worker_nodes(head) >= 1  # idle_timeout_minutes: 1, so they are still there
    assert sorted(run_dir.glob("checkpoint_epoch*/state.pt"))
    # the launched nodes' raylets and workers are ours too, and on loopback only
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in listen_addresses(head))
