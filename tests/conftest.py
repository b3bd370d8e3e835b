"""Shared fixtures. H5 files here are real files in pytest's tmp_path."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest


# HDF5 storage layouts a latent file may have; WindowReader has a fast path for "whole_chunks".
LAYOUTS = {
    "contiguous": {},
    "whole_chunks": {"chunks": True},  # one HDF5 chunk per latent chunk (what lam.data.synth writes)
    "gzip": {"chunks": True, "compression": "gzip"},
    "split_chunks": {"chunks": "half"},  # HDF5 chunks of half a latent chunk
}


def write_h5(path: Path, n_chunks: int = 4, shape_tail=(16, 2, 64, 64), dtype="float16", key="latents", seed: int = 0, values=None,
             layout: str = "contiguous") -> Path:
    """Write a latent file of random values (or `values`) in one of the `LAYOUTS`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if values is None:
        rng = np.random.default_rng(seed)
        values = rng.standard_normal((n_chunks, *shape_tail)).astype(dtype)
    options = dict(LAYOUTS[layout])
    if options.get("chunks") is True:
        options["chunks"] = (1, *values.shape[1:])
    elif options.get("chunks") == "half":
        options["chunks"] = (1, values.shape[1] // 2, *values.shape[2:])
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=values, **options)
    return path


@pytest.fixture
def h5_writer():
    return write_h5


# -----------------------------------------------------------------------------
# Ray and training fixtures: one local Ray per test session, tiny data and models.


@pytest.fixture(scope="session")
def ray_session():
    """The session's local Ray cluster (127.0.0.1), started the way `lam train` starts it."""
    import os

    import ray

    from lam.train.launch import init_ray

    # Ray workers unpickle functions defined in test modules by module name; let them import those.
    root = Path(__file__).resolve().parent.parent
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")])
    init_ray(min_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """4 synthetic videos of 8 chunks (16 latent frames): 2 train, 1 val, 1 test."""
    from lam.data.manifest import create_manifest, write_manifest
    from lam.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    write_synthetic_dataset(root, files=4, chunks=8, seed=0)
    write_manifest(create_manifest(root, 0.5, 0.25, 0.25, seed=0), root / "manifest.json")
    return root


def tiny_config(data_dir, storage, **train):
    """A model small enough to train in seconds on 2 cores."""
    from lam.config import RunConfig

    cfg = RunConfig()
    cfg.data.data_dir = str(data_dir)
    cfg.data.sequence_length = 4
    m = cfg.model
    m.patch_grid, m.patch_dim, m.embed_dim, m.num_heads = 4, 32, 32, 2
    m.encoder_depth, m.decoder_depth, m.codebook_dim, m.num_embeddings = 1, 1, 8, 4
    t = cfg.train
    t.batch_size, t.num_epochs, t.learning_rate, t.warmup_steps = 4, 2, 3e-3, 2
    t.storage_path, t.wandb_mode, t.log_every, t.save_every = str(storage), "disabled", 0, 1
    for k, v in train.items():
        setattr(t, k, v)
    return cfg
