"""Killed processes, for real: `kill -9` of one of a DDP run's two Ray Train workers with
--max_failures 1, SIGTERM to the `lam train` driver (it stops after a step checkpoint) and the
same command again, then `kill -9` of that driver in the middle of an epoch and the same command
again, which resumes at its last step checkpoint. The run ends as if nothing had happened: every epoch logged once, the same numbers and weights, bit for bit, as a run never
interrupted. (That each epoch reads the windows in its seed's order, also
across read tasks that finish in any order: tests/test_reproducible.py.)

The runs are `lam train` processes joined to the session's local Ray (127.0.0.1, token auth on),
so a killed driver leaves its Ray processes to that cluster to clean up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# What depends on the machine's speed, not on the seed.
TIME_KEYS = {"time", "train/samples_per_s", "train/steady_samples_per_s", "train/data_wait_s", "train/data_wait_fraction", "checkpoint/stall_s"}
EPOCHS = 10


@pytest.fixture(scope="module")
def env(ray_session) -> dict:
    """The environment of a `lam` process that joins the session's Ray."""
    return dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, RAY_AUTH_MODE="token")


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("kill_runs")


def lam_train(tiny_data, storage, run_name: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "lam", "train", "--recipe", "tiny", "--data_dir", str(tiny_data),
            "--storage_path", str(storage), "--run_name", run_name, "--num_epochs", str(EPOCHS),
            "--num_workers", "2", "--eval_every", "0", "--seed", "3", *flags]


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def logged_numbers(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS} for line in lines]


def final_weights(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / f"checkpoint_epoch{EPOCHS:04d}" / "state.pt", weights_only=True)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    import torch

    numbers_a, numbers_b = logged_numbers(a), logged_numbers(b)
    assert [r["epoch"] for r in numbers_b] == list(range(1, EPOCHS + 1))  # every epoch once
    # Bit for bit, not just close: each rank gets the same blocks in the same order, and on CPU
    # gloo sums the ranks' gradients and metrics in a fixed order.
    assert numbers_a == numbers_b
    weights_a, weights_b = final_weights(a), final_weights(b)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.fixture(scope="module")
def straight(env, tiny_data, storage) -> Path:
    """The run never interrupted."""
    run(lam_train(tiny_data, storage, "straight"), env)
    return storage / "straight"


def wait_for_checkpoint(run_dir: Path, epochs_done: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the checkpoint after `epochs_done` epochs is in the run directory; the run still going."""
    state = run_dir / f"checkpoint_epoch{epochs_done:04d}" / "state.pt"
    deadline = time.time() + timeout
    while not state.is_file():
        assert proc.poll() is None, f"lam train ended early: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"no {state} after {timeout} s"
        time.sleep(0.02)


def ray_train_workers() -> list[int]:
    """The pids of the Ray Train worker processes of the session's Ray: those among this process's
    descendants (the local Ray's raylet is its child), not those of any other Ray on this machine."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue

    def descends_from_us(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    found = []
    for pid in parent:
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes() and descends_from_us(pid):
                found.append(pid)
        except OSError:
            continue
    return found


def latest_registered(run_dir: Path) -> str | None:
    """The newest checkpoint Ray Train registered for the run (the one a resume starts from)."""
    try:
        record = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None
    return (record.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")


def step_of(name: str) -> int:
    """The optimizer steps done at step checkpoint `name` (checkpoint_epochNNNN_stepSSSSSSSS)."""
    return int(name.split("_step")[1].split("-")[0])


def wait_for_step_checkpoint(run_dir: Path, after_step: int, proc: subprocess.Popen, timeout: float = 300) -> str:
    """Until the run's newest registered checkpoint is a step checkpoint after step `after_step`; its name."""
    deadline = time.time() + timeout
    while True:
        name = latest_registered(run_dir) or ""
        if "_step" in name and step_of(name) > after_step:
            return name
        assert proc.poll() is None, f"lam train ended early: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"no step checkpoint after step {after_step} in {run_dir} after {timeout} s"
        time.sleep(0.005)


def resumed_line(run_dir: Path, name: str) -> str:
    """The console line of a run resumed from step checkpoint `name`."""
    epochs_done = int(name[len("checkpoint_epoch"):][:4])
    return f"[lam] resumed {run_dir.name} from {name} at epoch {epochs_done + 1}, step {step_of(name)},"


def test_a_killed_worker_a_stopped_and_a_killed_driver_end_as_if_never_stopped(env, tiny_data, storage, straight):
    """One run meets all three: one of its workers is killed (--max_failures 1: Ray Train restarts
    the worker group from the last checkpoint within the same command); its driver gets SIGTERM
    (a spot node's notice: a step checkpoint, exit 143, the same command resumes there); later
    the driver is killed in the middle of an epoch (the same command again resumes at the step
    checkpoint written there). The run never stopped wrote no step checkpoints: writing them
    changes nothing."""
    cmd = lam_train(tiny_data, storage, "killed", "--max_failures", "1", "--save_every_steps", "1")
    run_dir = storage / "killed"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(run_dir, 2, proc)
        workers = ray_train_workers()
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.time() + 120
        while not set(ray_train_workers()) - set(workers):  # a new worker: it restarted
            assert proc.poll() is None and time.time() < deadline, "the run did not restart its worker"
            time.sleep(0.1)

        wait_for_checkpoint(run_dir, 3, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    stopped_at = latest_registered(run_dir)
    assert "_step" in stopped_at and "[lam] stopped on SIGTERM at step" in out, out[-2000:]
    assert not (run_dir / f"checkpoint_epoch{EPOCHS:04d}").exists()

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step_checkpoint(run_dir, step_of(stopped_at), proc)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert resumed_line(run_dir, stopped_at) in out, out[-2000:]
    assert not (run_dir / f"checkpoint_epoch{EPOCHS:04d}").exists()  # killed before the end
    killed_at = latest_registered(run_dir)  # killed within milliseconds of seeing it: the next step takes longer
    assert "_step" in killed_at

    again = run(cmd, env)
    assert resumed_line(run_dir, killed_at) in again.stdout, again.stdout[-2000:]
    assert_same_run(straight, run_dir)
    # keep_best keeps the best epoch checkpoints and the latest; a step checkpoint only while it is the latest
    assert not list(run_dir.glob("checkpoint_epoch*_step*"))
