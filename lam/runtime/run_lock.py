"""One training process per run directory: a lock file that names its owner.

    with run_lock(run_dir):      # UserError if another live process holds it
        ...train...

The lock is `RUN_DIR/.lock`, holding the owner's host, pid and start time as JSON,
created atomically (O_EXCL). A second `lam train` with the same run directory refuses
with one line naming the owner. An owner that died without removing the lock does not
hold it forever: on the same host, a lock whose pid no longer runs is taken over; a
lock from another host is respected (its pid cannot be checked from here) and the
message says how to remove it. Run directories on object storage (URIs) are not locked.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from lam.errors import UserError
from lam.runtime import storage


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def acquire(run_dir: str) -> Path | None:
    """Take the run directory's lock (None for a URI); raise UserError if a live process holds it."""
    if storage.is_uri(run_dir):
        return None
    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # a second try after removing a dead owner's lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            same_host = owner.get("host") == socket.gethostname()
            if same_host and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]):
                path.unlink(missing_ok=True)  # its owner died without cleaning up
                continue
            who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
            hint = "" if same_host else f"; if that process is gone, delete {path}"
            raise UserError(f"{run_dir} is in use by another training process ({who}); "
                            f"wait for it or choose another --run_name{hint}")
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
        return path
    raise UserError(f"{path}: could not take the run directory's lock")


def release(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(run_dir: str):
    path = acquire(run_dir)
    try:
        yield path
    finally:
        release(path)
