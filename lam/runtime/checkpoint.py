"""Training checkpoints: everything needed to continue a run exactly where it stopped, and checkpoint -> model.

A checkpoint is a folder with one file, `state.pt`, holding the model (with the
quantizer's buffers: usage counters and recent encoder outputs), optimizer (its
per-parameter state keyed by the parameter's name, so a change in the order in which
the model registers its parts needs no re-indexing), scheduler, epoch, step and config. (An epoch checkpoint needs no RNG state: every epoch
seeds itself from the run's seed and the epoch, see lam/train/loop.py. A step checkpoint, written
inside an epoch, also holds `position`: each rank's generators, buffers and epoch sums, see
lam/train/position.py.) It is written to a temp name and
renamed, and Ray Train only registers a checkpoint after it is fully persisted,
so a crash never leaves a half-written checkpoint that a resume would pick up.
Loading uses `torch.load(weights_only=True)`: no pickled code runs. Beside the state file,
`state.pt.sha256` holds the SHA-256 and size of the bytes written; loading checks them first,
because `torch.load` reads a file with a flipped byte in its tensor data without complaint. A
state file that cannot be read or whose bytes differ from those written (cut short by a full
or failing disk, changed by a bad disk or copy, overwritten, empty) is a `CorruptCheckpoint`,
one line naming the file; `lam.train.resume` then falls back to the newest intact checkpoint
of the run. Checkpoints written before the checksum existed load without the check.

Checkpoints of older versions load too: `load_checkpoint` upgrades them (config keys,
model state-dict keys, and the optimizer state from positions to names) to today's format, so evaluation, export and resuming
see one format.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from functools import partial
from pathlib import Path

import torch

from lam.config import RunConfig, apply_overrides
from lam.errors import UserError
from lam.runtime import storage
from lam.model import LatentActionModel

STATE_FILE = "state.pt"
CHECKSUM_FILE = "state.pt.sha256"  # "<sha256 hex> <bytes>" of the state file as written
# 6: the optional loss terms' weights live under `optional_terms.NAME.` (lam/model/terms.py).
# 5: the config lists only the chosen forward target's settings too. 4: only the chosen
# quantizer's settings (lam/config/components.py).
# 3: the optimizer's per-parameter state is keyed by parameter name. 2: the model's components
# are named choices (stem, action_head, quantizer, whiten) and the encoder is split into stem,
# moments and head; the optimizer state keyed by parameter position. 1 (no `format` key): the
# boolean-flag model.
FORMAT = 6
_FORMAT_5_MODEL_KEYS = (  # old prefix -> new prefix
    ("label_head.", "optional_terms.label.head."),
    ("moments_head.", "optional_terms.moments.head."),
)
_FORMAT_1_MODEL_KEYS = (  # old prefix -> new prefix, first match wins
    ("encoder.motion_pool.", "encoder.stem.pool."),
    ("encoder.motion.", "encoder.stem.mlp."),
    ("encoder.moment_proj.", "encoder.moments.proj."),
    ("encoder.", "encoder.head."),  # the rest of the old encoder is today's action head
    ("z_norm.", "whiten."),
)


def save_checkpoint(directory: str | os.PathLike, **state) -> Path:
    """Write `state` (with today's format) to DIRECTORY/state.pt and its checksum beside it, each
    to a temporary name first; a full disk is a `StorageFull`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp, tmp_sum = directory / f".{STATE_FILE}.tmp", directory / f".{CHECKSUM_FILE}.tmp"
    try:
        torch.save({**state, "format": FORMAT}, tmp)
        tmp_sum.write_text(f"{file_sha256(tmp)} {tmp.stat().st_size}\n")  # of the bytes on disk, read back
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError of its zip writer
        tmp.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)
        if storage.is_no_space(e) or "No space left" in str(e):
            raise storage.StorageFull(directory) from None
        raise
    # The checksum first: a crash between the two leaves a mismatch (read as corrupt), never a
    # state file that passes for another's.
    os.replace(tmp_sum, directory / CHECKSUM_FILE)
    os.replace(tmp, directory / STATE_FILE)
    return directory / STATE_FILE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path) -> None:
    """A CorruptCheckpoint when the state file's bytes are not those written (no-op for a
    checkpoint written before checksums)."""
    recorded = path.with_name(CHECKSUM_FILE)
    if not recorded.is_file():
        return
    try:
        expected, expected_size = recorded.read_text().split()
        expected_size = int(expected_size)
    except ValueError:
        raise CorruptCheckpoint(f"{path}: corrupt checkpoint: its checksum file {recorded.name} cannot be read") from None
    size = path.stat().st_size
    if size != expected_size:
        raise CorruptCheckpoint(f"{path}: corrupt checkpoint, cannot be read ({size} of the {expected_size} bytes written); "
                                "it was probably cut short by a full or failing disk")
    if file_sha256(path) != expected:
        raise CorruptCheckpoint(f"{path}: corrupt checkpoint: its bytes differ from those written (SHA-256 mismatch); "
                                "a failing disk or a bad copy changed it")


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
    verify_checksum(path)
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
    """An older checkpoint in today's format. Format 1: config booleans -> component names and
    model keys renamed. Formats 1 to 4: of the settings of every component choice (quantizer,
    forward target), which the config listed flat, the chosen one's kept (the model never read
    the others). Formats 1 to 5: the label and moments heads' weights renamed to the optional
    terms' (model and optimizer state). Formats 1 and 2: the
    optimizer state, indexed by parameter position, keyed by parameter name (a state dict lists
    parameters in the order the model registered them)."""
    version = state.get("format", 1)
    upgraded = {**state, "format": FORMAT}
    config = apply_overrides(RunConfig(), state["config"], source="checkpoint", warn_deprecated=False, unused="drop")
    upgraded["config"] = config.to_dict()
    if version < 2:
        upgraded["model"] = {_rename(key, _FORMAT_1_MODEL_KEYS): value for key, value in state["model"].items()}
    if version < 6:
        upgraded["model"] = {_rename(key, _FORMAT_5_MODEL_KEYS): value for key, value in upgraded["model"].items()}
    if 3 <= version < 6 and state.get("optimizer"):
        optimizer = state["optimizer"]
        rename = partial(_rename, prefixes=_FORMAT_5_MODEL_KEYS)
        upgraded["optimizer"] = {**optimizer, "state": {rename(name): value for name, value in optimizer["state"].items()},
                                 "param_groups": [{**group, "params": [rename(name) for name in group["params"]]}
                                                  for group in optimizer["param_groups"]]}
    if version < 3 and state.get("optimizer"):
        with torch.device("meta"):  # only the parameters' names are needed
            names = {name for name, _ in LatentActionModel(config.model).named_parameters()}
        saved_order = [key for key in upgraded["model"] if key in names]
        if len(saved_order) != len(names):
            raise UserError(f"checkpoint's parameters do not match the model's: {sorted(names - set(saved_order))[:5]}")
        upgraded["optimizer"] = _by_name(state["optimizer"], saved_order)
    return upgraded


def _by_name(indexed: dict, names: list[str]) -> dict:
    """An optimizer state dict whose parameters are positions into `names`, keyed by those names."""
    return {**indexed, "state": {names[i]: value for i, value in indexed["state"].items()},
            "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in indexed["param_groups"]]}


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict with its parameters keyed by their names in `model` (which the
    optimizer was built over, in `model.parameters()` order)."""
    return _by_name(optimizer.state_dict(), [name for name, _ in model.named_parameters()])


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: dict) -> None:
    """Restore a by-name optimizer state (`optimizer_state`) into an optimizer built over
    `model.parameters()`, whatever order the model registers them in now."""
    position = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    saved = {name for group in state["param_groups"] for name in group["params"]}
    if saved != set(position):
        raise UserError(f"checkpoint's parameters do not match the model's: {sorted(saved ^ set(position))[:5]}")
    # torch pairs a saved group's ids with the optimizer's own parameters in order: list each
    # group's positions in the order the optimizer holds them (the model's order).
    optimizer.load_state_dict({**state, "state": {position[name]: value for name, value in state["state"].items()},
                               "param_groups": [{**group, "params": sorted(position[name] for name in group["params"])}
                                                for group in state["param_groups"]]})


def _rename(key: str, prefixes: tuple[tuple[str, str], ...]) -> str:
    for old, new in prefixes:
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
