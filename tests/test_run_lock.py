"""One training process per run directory."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from lam.errors import UserError
from lam.runtime.run_lock import acquire, release, run_lock


def write_lock(run_dir, pid: int, host: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".lock").write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": "then"}))


def test_a_held_run_directory_is_refused_naming_its_owner(tmp_path):
    with run_lock(str(tmp_path / "run")) as path:
        owner = json.loads(path.read_text())
        with pytest.raises(UserError, match=f"in use by another training process \\(pid {owner['pid']} on {owner['host']}"):
            acquire(str(tmp_path / "run"))
    assert not path.exists()  # released on the way out
    release(acquire(str(tmp_path / "run")))  # and free again


def test_a_dead_owner_does_not_hold_the_lock(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_lock(tmp_path / "run", gone.pid)
    path = acquire(str(tmp_path / "run"))
    assert json.loads(path.read_text())["pid"] != gone.pid
    release(path)


def test_a_lock_from_another_host_is_respected_and_says_how_to_remove_it(tmp_path):
    write_lock(tmp_path / "run", 12345, host="another-host")
    with pytest.raises(UserError, match="delete .*\\.lock"):
        acquire(str(tmp_path / "run"))


def test_object_storage_is_not_locked():
    assert acquire("s3://bucket/runs/x") is None


def test_a_second_lam_train_refuses_with_one_line_and_exit_2(tiny_data, tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_lock(tmp_path / "busy", owner.pid)
        proc = subprocess.run([sys.executable, "-m", "lam", "train", "--recipe", "tiny", "--data_dir", str(tiny_data),
                               "--storage_path", str(tmp_path), "--run_name", "busy"], capture_output=True, text=True, timeout=300)
    finally:
        owner.kill()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {owner.pid}" in lines[0] and "in use by another training process" in lines[0]
    assert json.loads((tmp_path / "busy" / ".lock").read_text())["pid"] == owner.pid  # the owner's lock is untouched
