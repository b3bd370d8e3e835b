"""Shared fixtures. H5 files here are real files in pytest's tmp_path."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest


def write_h5(path: Path, n_chunks: int = 4, shape_tail=(16, 2, 64, 64), dtype="float16", key="latents", seed: int = 0, values=None) -> Path:
    """Write a latent file whose value at (chunk k, channel c, j) encodes its timeline position, plus noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if values is None:
        rng = np.random.default_rng(seed)
        values = rng.standard_normal((n_chunks, *shape_tail)).astype(dtype)
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=values)
    return path


@pytest.fixture
def h5_writer():
    return write_h5
