"""Which checkpoint a run resumes from, and what a new checkpoint folder is called.

Ray Train hands a restarted or re-run training loop the latest checkpoint it
registered. When that checkpoint cannot be read (its state file was cut short by a
full or failing disk, or it is missing), the run resumes from the newest checkpoint
folder of the run that can be read, and rank 0 prints one warning per damaged
checkpoint it passed over. Only when no checkpoint of the run can be read does the
run stop, with an error naming the run directory.

A checkpoint folder that a run wrote but Ray Train never registered (the driver died while
it was being saved, or Ray could not delete a checkpoint that `keep_best` evicted) is an
orphan: no resume would use it, and `keep_best` does not count it. A re-run removes such
folders first, one line each (`remove_orphan_checkpoints`).

Checkpoint folders are `checkpoint_epochNNNN`, NNNN the epochs done, and (with
`save_every_steps`) `checkpoint_epochNNNN_stepSSSSSSSS` for a step checkpoint inside epoch
NNNN + 1, SSSSSSSS the optimizer steps done in the run. A folder of that
name may already exist when a run trains an epoch again: after falling back past a
damaged checkpoint, or when an earlier process was killed while its checkpoint was
being copied. Such a folder is never written over (Ray Train may still list it, and
removing it would remove the new one): the new folder is `checkpoint_epochNNNN-2`,
`-3`, and so on.
"""

from __future__ import annotations

import json
import re

import ray.train

from lam.errors import UserError
from lam.runtime import storage
from lam.runtime.checkpoint import load_checkpoint

CHECKPOINT_FOLDER = re.compile(r"^checkpoint_epoch(\d+)(?:_step(\d+))?(?:-(\d+))?$")


def _age(name: str) -> tuple[int, int, int]:
    """(epochs done, steps done for a step checkpoint else 0, repeat): larger is newer. A step
    checkpoint comes after the checkpoint of the epoch before it and before its own epoch's."""
    match = CHECKPOINT_FOLDER.match(name)
    return (int(match[1]), int(match[2] or 0), int(match[3] or 1)) if match else (-1, 0, 0)


def checkpoint_folders(run_dir: str) -> list[str]:
    """The run's checkpoint folder names, newest first."""
    return sorted((n for n in storage.list_names(run_dir) if CHECKPOINT_FOLDER.match(n)), key=_age, reverse=True)


def new_checkpoint_name(run_dir: str, epochs_done: int, step: int | None = None) -> str:
    """The folder name for the checkpoint after `epochs_done` epochs, or with `step` for the step
    checkpoint at that step of the next epoch: never one that exists."""
    base = f"checkpoint_epoch{epochs_done:04d}" + (f"_step{step:08d}" if step is not None else "")
    taken = set(storage.list_names(run_dir))
    name, repeat = base, 1
    while name in taken:
        repeat += 1
        name = f"{base}-{repeat}"
    return name


def load_resume_state(latest: ray.train.Checkpoint, run_dir: str, device) -> tuple[dict, str, list[str]]:
    """The state to resume from, its checkpoint folder's name, and one message per damaged
    checkpoint passed over on the way (newest first)."""
    latest_name = latest.path.rstrip("/").rsplit("/", 1)[-1]
    older = [n for n in checkpoint_folders(run_dir) if _age(n) < _age(latest_name)]
    candidates = [(latest_name, latest)] + [(n, ray.train.Checkpoint(storage.join(run_dir, n))) for n in older]
    damaged = []
    for name, checkpoint in candidates:
        try:
            with checkpoint.as_directory() as directory:
                return load_checkpoint(directory, map_location=device), name, damaged
        except UserError as e:  # a damaged or missing state file
            damaged.append(str(e))
    raise UserError(f"{run_dir}: no checkpoint of this run can be read ({len(damaged)} tried; the newest: {damaged[0]}); "
                    "start the run again under a new --run_name")


# Ray Train's record of the checkpoints it registered, in the run directory. Its format is
# Ray's own (not a public API), so it is read in one place, and a form this code does not know
# makes it remove nothing.
RAY_CHECKPOINT_RECORD = "checkpoint_manager_snapshot.json"


def registered_checkpoints(run_dir: str) -> set[str] | None:
    """The checkpoint folders Ray Train registered for the run: empty when it registered none
    (no record yet); None when its record is in a form not understood."""
    text = storage.read_text(storage.join(run_dir, RAY_CHECKPOINT_RECORD))
    if text is None:
        return set()
    try:
        record = json.loads(text)
        results = [*record["checkpoint_results"], record.get("latest_checkpoint_result") or {}]
        return {r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")}
    except (ValueError, KeyError, TypeError):
        return None


def remove_orphan_checkpoints(run_dir: str) -> list[str]:
    """Remove the run's checkpoint folders that Ray Train never registered, saying so; the
    names removed. Call with the run's lock held, before the run starts (no save is under way)."""
    registered = registered_checkpoints(run_dir)
    if registered is None:
        return []
    orphans = [name for name in checkpoint_folders(run_dir) if name not in registered]
    for name in orphans:
        storage.remove_dir(storage.join(run_dir, name))
        print(f"[lam] removed {storage.join(run_dir, name)}: a checkpoint folder written but never registered "
              "(its run stopped while saving it, or Ray could not delete it when keep_best evicted it)", flush=True)
    return orphans

