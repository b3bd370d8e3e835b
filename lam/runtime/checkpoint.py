"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder with one file, `state.pt`, holding the model (with the
quantizer's buffers: usage counters and recent encoder outputs), optimizer,
scheduler, epoch, step, config and RNG states. It is written to a temp name and
renamed, and Ray Train only registers a checkpoint after it is fully persisted,
so a crash never leaves a half-written checkpoint that a resume would pick up.
Loading uses `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),  # the Mersenne Twister words (version and gauss are fixed)
        "python_pos": random.getstate()[1][-1],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike, **state) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp"
    torch.save({**state, "rng": rng_state()}, tmp)
    os.replace(tmp, directory / STATE_FILE)
    return directory / STATE_FILE


def load_checkpoint(directory: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        from lam.errors import UserError

        raise UserError(f"{directory}: not a lam checkpoint (no {STATE_FILE})")
    return torch.load(path, map_location=map_location, weights_only=True)
