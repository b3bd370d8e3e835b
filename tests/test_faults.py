"""What long runs meet, caused for real: a damaged checkpoint, a full disk. Real Ray Train on the
session's local Ray; the tiny recipe on the session's tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_config

from lam.train.launch import TrainingFailed, train


def epochs_logged(run_dir) -> list[int]:
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return [r["epoch"] for r in map(json.loads, lines) if "epoch" in r]


def test_our_errors_read_the_same_after_crossing_processes():
    """Ray pickles a worker's exception to hand it on; the copy's message must not change."""
    import pickle

    from lam.errors import DataError
    from lam.runtime.checkpoint import CorruptCheckpoint
    from lam.runtime.storage import StorageFull

    for error in (StorageFull("/runs/a", " (2.0 MB needed, 1.0 MB free)"), DataError("/data/a.h5", "window 0..3 contains NaN"),
                  CorruptCheckpoint("/runs/a/checkpoint_epoch0001/state.pt: corrupt checkpoint")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def one_line_error(argv: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lam", *argv], capture_output=True, text=True, timeout=120)
    return proc


@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_and_the_run_resumes_from_the_newest_intact_one(ray_session, tiny_data, tmp_path, capfd):
    from lam.runtime.checkpoint import load_checkpoint

    cfg = tiny_config(tiny_data, tmp_path, num_epochs=3, eval_every=0, run_name="damaged")
    first = train(cfg.copy(), verbose=False)
    run_dir = Path(first.run_dir)
    latest = Path(first.checkpoint_path)
    assert latest.name == "checkpoint_epoch0003"
    state_file = latest / "state.pt"
    state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 2])  # a disk that filled up mid-write

    # `lam eval` on it: one line naming the file, exit 2
    proc = one_line_error(["eval", "--checkpoint", str(latest), "--data_dir", str(tiny_data), "--split", "test"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(state_file) in lines[0] and "corrupt checkpoint" in lines[0], proc.stderr

    # A folder a killed driver wrote but Ray Train never registered: removed first, with a line
    orphan = run_dir / "checkpoint_epoch0009"
    orphan.mkdir()
    (orphan / "state.pt").write_bytes((run_dir / "checkpoint_epoch0002" / "state.pt").read_bytes())

    # The same command again: epoch 3 is trained again from epoch 2's checkpoint, into a new folder
    capfd.readouterr()
    again = train(cfg.copy(), verbose=False)
    assert not orphan.exists()
    assert Path(again.checkpoint_path).name == "checkpoint_epoch0003-2"
    assert load_checkpoint(again.checkpoint_path)["epoch"] == 2
    assert epochs_logged(run_dir) == [1, 2, 3]  # epoch 3 once: its first record was dropped with its checkpoint
    assert state_file.stat().st_size > 0  # the damaged folder is left for the user, never written over
    console = _console_until(capfd, "[lam] resumed")
    assert f"{state_file}: corrupt checkpoint" in console and "resumed damaged from checkpoint_epoch0002 at epoch 3" in console
    assert f"[lam] removed {orphan}: a checkpoint folder written but never registered" in console


def _console_until(capfd, text: str, tries: int = 50) -> str:
    """What the workers printed so far (Ray forwards their output asynchronously)."""
    import time

    console = ""
    for _ in range(tries):
        console += capfd.readouterr().out
        if text in console:
            break
        time.sleep(0.2)
    return console


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs at tmp_path/small, unmounted afterwards; skipped where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_every_earlier_checkpoint(ray_session, tiny_data, small_disk):
    from lam.runtime.checkpoint import load_checkpoint

    cfg = tiny_config(tiny_data, small_disk, num_epochs=2, eval_every=0, keep_best=5, run_name="full")
    first = train(cfg.copy(), verbose=False)
    run_dir = Path(first.run_dir)
    checkpoint_size = (Path(first.checkpoint_path) / "state.pt").stat().st_size

    # Fill the disk but for less than one more checkpoint, then train on
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - checkpoint_size // 2))
    cfg.train.num_epochs = 4
    with pytest.raises(TrainingFailed) as failure:
        train(cfg.copy(), verbose=False)
    message = str(failure.value)
    assert "\n" not in message and message.count("no space left on device") == 1 and str(run_dir) in message, message
    intact = sorted(run_dir.glob("checkpoint_epoch*"))
    assert [c.name for c in intact] == ["checkpoint_epoch0001", "checkpoint_epoch0002"]
    assert [load_checkpoint(c)["epoch"] for c in intact] == [0, 1]

    # Space again: the same command resumes from epoch 2's checkpoint and finishes
    filler.unlink()
    done = train(cfg.copy(), verbose=False)
    assert Path(done.checkpoint_path).name == "checkpoint_epoch0004"
    assert epochs_logged(run_dir) == [1, 2, 3, 4]


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    """The session's tiny data, copied: these tests damage it."""
    import shutil

    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def poison(path: Path, chunk: int) -> None:
    """Write NaN into one latent chunk of an H5 file (after its manifest was written)."""
    import h5py
    import numpy as np

    with h5py.File(path, "r+") as f:
        f["latents"][chunk, 3, 1, 10, 10] = np.nan


@pytest.mark.slow
def test_a_nan_window_written_after_the_manifest_is_skipped_counted_and_named(ray_session, data_copy, tmp_path, capfd):
    from lam.data.manifest import load_manifest

    bad_file = load_manifest(data_copy / "manifest.json").splits["train"][0]
    poison(data_copy / bad_file, chunk=2)  # latent frames 4..5: one window of 4 frames (frames 4..7)

    cfg = tiny_config(data_copy, tmp_path, num_epochs=2, eval_every=0, run_name="nan")
    capfd.readouterr()
    out = train(cfg.copy(), verbose=False)
    records = [json.loads(line) for line in Path(out.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert [r["data/skipped_windows"] for r in records] == [1, 1]  # each epoch reads it, each epoch skips it
    console = _console_until(capfd, "skipped a window")
    assert f"epoch 1: skipped a window: {data_copy / bad_file}: window of latent frames 4..7 contains NaN" in console

    # Strict: the first bad window ends the run, in one line naming the file and the frames
    with pytest.raises(TrainingFailed) as failure:
        train(tiny_config(data_copy, tmp_path, num_epochs=1, eval_every=0, run_name="strict", max_bad_windows="fail"), verbose=False)
    message = str(failure.value)
    assert "\n" not in message and f"{data_copy / bad_file}: window of latent frames 4..7 contains NaN" in message, message

    # `lam manifest --full_check` reads every chunk: the file is left out, with the chunk named
    from lam.commands import main

    capfd.readouterr()
    assert main(["manifest", str(data_copy), "--out", str(tmp_path / "checked.json"), "--full_check"]) == 0
    report = capfd.readouterr().out
    assert f"invalid, left out: {bad_file}: latents contain 1 NaN and 0 Inf values in all chunks (first in chunk 2: latent frames 4..5)" in report
    assert bad_file not in sum(load_manifest(tmp_path / "checked.json", data_copy).splits.values(), [])


def test_checkpoint_folders_ray_never_registered_are_removed_and_named(tmp_path, capsys):
    from lam.train.resume import RAY_CHECKPOINT_RECORD, remove_orphan_checkpoints

    run = tmp_path / "run"
    for name in ("checkpoint_epoch0001", "checkpoint_epoch0002", "checkpoint_epoch0002-2", "checkpoint_epoch0003"):
        (run / name).mkdir(parents=True)
        (run / name / "state.pt").write_bytes(b"x")
    (run / "metrics.jsonl").write_text("")
    record = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_epoch0001"}, {"checkpoint_dir_name": "checkpoint_epoch0002-2"}],
              "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_epoch0002-2"}}
    (run / RAY_CHECKPOINT_RECORD).write_text(json.dumps(record))
    assert remove_orphan_checkpoints(str(run)) == ["checkpoint_epoch0003", "checkpoint_epoch0002"]  # newest first
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_epoch0001", "checkpoint_epoch0002-2", RAY_CHECKPOINT_RECORD,
                                                    "metrics.jsonl"]
    out = capsys.readouterr().out
    assert out.count("a checkpoint folder written but never registered") == 2 and str(run / "checkpoint_epoch0003") in out

    # A record in a form this code does not know: nothing is removed
    (run / RAY_CHECKPOINT_RECORD).write_text(json.dumps({"checkpoints": []}))
    assert remove_orphan_checkpoints(str(run)) == [] and (run / "checkpoint_epoch0001").is_dir()
    # No record at all: Ray registered nothing, so every checkpoint folder is an orphan
    (run / RAY_CHECKPOINT_RECORD).unlink()
    assert remove_orphan_checkpoints(str(run)) == ["checkpoint_epoch0002-2", "checkpoint_epoch0001"]


def test_step_checkpoint_folders_sort_between_their_epochs_and_are_never_reused(tmp_path):
    from lam.train.resume import checkpoint_folders, new_checkpoint_name

    run = tmp_path / "run"
    names = ["checkpoint_epoch0002", "checkpoint_epoch0002_step00000013", "checkpoint_epoch0002_step00000015",
             "checkpoint_epoch0003", "checkpoint_epoch0001_step00000002"]
    for name in names:
        (run / name).mkdir(parents=True)
    assert checkpoint_folders(str(run)) == ["checkpoint_epoch0003", "checkpoint_epoch0002_step00000015",
                                            "checkpoint_epoch0002_step00000013", "checkpoint_epoch0002",
                                            "checkpoint_epoch0001_step00000002"]
    assert new_checkpoint_name(str(run), 2, 17) == "checkpoint_epoch0002_step00000017"
    assert new_checkpoint_name(str(run), 2, 15) == "checkpoint_epoch0002_step00000015-2"  # an epoch trained again
    assert new_checkpoint_name(str(run), 4) == "checkpoint_epoch0004"

