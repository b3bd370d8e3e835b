"""Training checkpoints: everything needed to continue a run exactly where it stopped, and checkpoint -> model.

A checkpoint is a folder with one file, `state.pt`, holding the model (with the
quantizer's buffers: usage counters and recent encoder outputs), optimizer,
scheduler, epoch, step and config. (No RNG state: every epoch seeds itself from the
run's seed and the epoch, see lam/train/loop.py.) It is written to a temp name and
renamed, and Ray Train only registers a checkpoint after it is fully persisted,
so a crash never leaves a half-written checkpoint that a resume would pick up.
Loading uses `torch.load(weights_only=True)`: no pickled code runs. A state file that
cannot be read (cut short by a full or failing disk, overwritten, empty) is a
`CorruptCheckpoint`, one line naming the file; `lam.train.resume` then falls back to
the newest intact checkpoint of the run.

Checkpoints of older versions load too: `load_checkpoint` upgrades them (config keys
and model state-dict keys) to today's format, so evaluation, export and resuming
see one format.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from lam.config import RunConfig, apply_overrides
from lam.errors import UserError
from lam.runtime import storage
from lam.model import LatentActionModel

STATE_FILE = "state.pt"
# 2: the model's components are named choices (stem, action_head, quantizer, whiten) and the
# encoder is split into stem, moments and head. 1 (no `format` key): the boolean-flag model.
FORMAT = 2
_FORMAT_1_MODEL_KEYS = (  # old prefix -> new prefix, first match wins
    ("encoder.motion_pool.", "encoder.stem.pool."),
    ("encoder.motion.", "encoder.stem.mlp."),
    ("encoder.moment_proj.", "encoder.moments.proj."),
    ("encoder.", "encoder.head."),  # the rest of the old encoder is today's action head
    ("z_norm.", "whiten."),
)


def save_checkpoint(directory: str | os.PathLike, **state) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp"
    try:
        torch.save({**state, "format": FORMAT}, tmp)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError of its zip writer
        tmp.unlink(missing_ok=True)
        if storage.is_no_space(e) or "No space left" in str(e):
            raise storage.StorageFull(directory) from None
        raise
    os.replace(tmp, directory / STATE_FILE)
    return directory / STATE_FILE


def check_checkpoint(directory: str | os.PathLike) -> Path:
    """The checkpoint's state file; a UserError when the folder is not a checkpoint."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{directory}: not a lam checkpoint folder (no {STATE_FILE}); pass a checkpoint_epoch* folder of a run")
    return path


class CorruptCheckpoint(UserError):
    """A checkpoint's state file exists but cannot be read back."""


def load_checkpoint(directory: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint's state, in today's format whatever version wrote it; a CorruptCheckpoint
    when its state file is damaged."""
    path = check_checkpoint(directory)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". This is an internal")[0]
        raise CorruptCheckpoint(f"{path}: corrupt checkpoint, cannot be read ({reason or 'the file ends early'}, "
                                f"{path.stat().st_size} bytes); it was probably cut short by a full or failing disk") from None
    if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
        raise CorruptCheckpoint(f"{path}: not a lam checkpoint (no model or config in it)")
    return upgrade(state) if state.get("format", 1) < FORMAT else state


def upgrade(state: dict) -> dict:
    """A format-1 checkpoint in today's format: config booleans -> component names, model keys
    renamed, and the optimizer state (indexed by parameter position) put in today's parameter order."""
    config = apply_overrides(RunConfig(), state["config"], source="checkpoint", warn_deprecated=False)
    model = {_rename(key): value for key, value in state["model"].items()}
    upgraded = {**state, "config": config.to_dict(), "model": model, "format": FORMAT}
    if "optimizer" in state:
        with torch.device("meta"):  # only the parameters' names and order are needed
            names = [name for name, _ in LatentActionModel(config.model).named_parameters()]
        saved_order = [key for key in model if key in set(names)]  # a state dict lists parameters in the order they had
        upgraded["optimizer"] = _reorder(state["optimizer"], saved_order, names)
    return upgraded


def _reorder(optimizer_state: dict, saved_order: list[str], order: list[str]) -> dict:
    """The optimizer state of parameters saved in `saved_order`, re-indexed for `order`."""
    if sorted(saved_order) != sorted(order):
        raise UserError(f"checkpoint's parameters do not match the model's: {sorted(set(saved_order) ^ set(order))[:5]}")
    position = {name: i for i, name in enumerate(saved_order)}
    per_param = optimizer_state["state"]
    state = {new: per_param[position[name]] for new, name in enumerate(order) if position[name] in per_param}
    return {**optimizer_state, "state": state}


def _rename(key: str) -> str:
    for old, new in _FORMAT_1_MODEL_KEYS:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LatentActionModel, RunConfig]:
    """The model (in eval mode) and run config stored in a `lam train` checkpoint folder."""
    state = load_checkpoint(checkpoint, map_location=device)
    cfg = RunConfig.from_dict(state["config"])
    model = LatentActionModel(cfg.model).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg
