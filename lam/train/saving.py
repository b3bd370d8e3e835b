"""Reporting an epoch to Ray Train with a checkpoint, holding training up as little as possible.

Two ways (`checkpoint_upload`):

  async  training waits only for a copy of the state in host memory (`snapshot`); writing
         the state file and copying it into the run directory happen on Ray Train's upload
         thread (`ray.train.report(checkpoint_upload_mode=ASYNC)`) while the next steps run.
  sync   the state file is written and copied before the next step (Ray's default).

The guarantees are the same both ways: the state file is written to a temp name and
renamed (`save_checkpoint`), a full disk is one clear `StorageFull`, and Ray Train
registers a checkpoint (the one a resume or a restarted worker picks up) only after its
copy into the run directory finished, so a crash during an upload leaves the previous
checkpoint as the latest. Ray Train waits for a pending upload before the run ends, and
a failed upload stops the run with its error. Where the installed Ray has no
asynchronous upload, `async` falls back to `sync`.

One checkpoint is uploaded at a time: a checkpoint due while the previous one is still being
uploaded waits for it (the wait counts as the checkpoint's stall). Ray Train delivers every
report after the uploads queued before it, so without that bound frequent step checkpoints
that upload slower than training steps pile up, and the newest registered checkpoint, the one
a resume would use, falls ever further behind what the console shows.
"""

from __future__ import annotations

import inspect
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import ray.train

from lam.runtime import storage
from lam.runtime.checkpoint import STATE_FILE, save_checkpoint

ASYNC_AVAILABLE = hasattr(ray.train, "CheckpointUploadMode") and "checkpoint_upload_fn" in inspect.signature(ray.train.report).parameters

# Held from an asynchronous checkpoint's report until its upload has ended (or failed).
_upload_slot = threading.BoundedSemaphore(1)


def snapshot(state):
    """A copy of `state` (nested dicts and lists of tensors and plain values) in host memory,
    which training may go on changing. GPU tensors are copied into pinned memory without
    waiting for each, then the device is waited for once."""
    on_gpu = []

    def copy(value):
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.is_cuda:
                host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                host.copy_(value, non_blocking=True)
                on_gpu.append(host)
                return host
            return value.clone()
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        return value

    copied = copy(state)
    if on_gpu:
        torch.cuda.synchronize()
    return copied


def report(record: dict, state: dict | None, run_dir: str, name: str | None, mode: str) -> float:
    """`ray.train.report(record)` on every rank, with a checkpoint of `state` where it is given
    (rank 0's call); returns the seconds this rank was held up by it."""
    start = time.perf_counter()
    if mode == "async" and ASYNC_AVAILABLE:
        upload = ray.train.CheckpointUploadMode.ASYNC
        if state is None:
            ray.train.report(record, checkpoint=None, checkpoint_dir_name=name, checkpoint_upload_mode=upload)  # ray:
            return time.perf_counter() - start
        _upload_slot.acquire()  # one upload at a time (see the module docstring)
        queued = False
        try:
            staging = tempfile.mkdtemp(prefix="lam-checkpoint-")
            held = snapshot(state)

            def write_and_upload(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
                # On Ray Train's upload thread: the run registers the checkpoint once this returns.
                try:
                    write_state(staging, held, run_dir)
                    return ray.train.get_context().get_storage().persist_current_checkpoint(checkpoint, dir_name)  # ray:
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                    _upload_slot.release()

            ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(staging), checkpoint_dir_name=name,  # ray:
                             checkpoint_upload_mode=upload, checkpoint_upload_fn=write_and_upload)
            queued = True
        finally:
            if not queued:
                _upload_slot.release()
        return time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="lam-checkpoint-") as staging:
        checkpoint = None
        if state is not None:
            write_state(staging, state, run_dir)
            checkpoint = ray.train.Checkpoint.from_directory(staging)
        ray.train.report(record, checkpoint=checkpoint, checkpoint_dir_name=name)  # ray:
    return time.perf_counter() - start


def write_state(staging: str, state: dict, run_dir: str) -> None:
    save_checkpoint(staging, **state)
    # Before Ray copies it to the run directory: a full disk there is one clear line,
    # not a half-copied folder.
    storage.check_free_space(run_dir, (Path(staging) / STATE_FILE).stat().st_size + (1 << 20))


# A step checkpoint's score for Ray Train's keep_best (ordered "min"): worse than any epoch's, so
# that it is kept only while it is the latest. Finite: Ray's record of its checkpoints (JSON,
# read back on resume) turns NaN and infinities into nulls, which it cannot order.
STEP_CHECKPOINT_SCORE = sys.float_info.max


def checkpoint_score(record: dict, metric: str, mode: str) -> float | None:
    """The number Ray Train keeps the lowest `keep_best` checkpoints by: `metric` of the epoch's
    record (val/loss falls back to train/loss in a run without a val split), negated for mode
    max; None when the record lacks it (the checkpoint is then not saved, with a warning)."""
    value = record.get(metric, record.get("train/loss") if metric == "val/loss" else None)
    if value is None:
        return None
    return value if mode == "min" else -value
