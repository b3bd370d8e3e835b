"""What the tests share: tiny configs from the recipes, an H5 writer, a 2-process gloo harness, a free port,
a guard against reads of device values."""

from __future__ import annotations

import socket
from pathlib import Path

import h5py
import numpy as np

from lam.config import ModelConfig, RunConfig, apply_overrides
from lam.recipes import recipe_config

ROOT = Path(__file__).resolve().parent.parent


def positive(x) -> bool:
    """A finite number above 0 (for figures whose size the tests cannot know)."""
    import math

    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_host_reads():
    """A torch dispatch mode that fails on any read of a tensor's value into Python (`.item()`,
    `bool(t)`, `int(t)`, `.tolist()`): on a GPU each one waits for every queued kernel. They all go
    through aten._local_scalar_dense."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class NoHostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            assert func is not torch.ops.aten._local_scalar_dense.default, "a device value was read back to the host"
            return func(*args, **(kwargs or {}))

    return NoHostReads()


# -----------------------------------------------------------------------------
# Configs


def tiny_config(data_dir, storage, **overrides) -> RunConfig:
    """The tiny recipe on `data_dir`, writing runs under `storage`; `overrides` are flat config keys."""
    cfg = recipe_config("tiny")
    cfg.data.data_dir, cfg.train.storage_path = str(data_dir), str(storage)
    return apply_overrides(cfg, overrides, source="test")


def small_model_config(**overrides) -> ModelConfig:
    """The tiny recipe's model on 4-channel 16x16 latents (4x4 patches of dim 16): a few thousand
    parameters, fast enough to run every causality check over every combination of parts."""
    cfg = recipe_config("tiny")
    base = dict(in_channels=4, latent_size=16, patch_dim=16, embed_dim=32, encoder_depth=2, decoder_depth=2,
                num_embeddings=5, num_codes=3, max_frames=8)
    apply_overrides(cfg, {**base, **overrides}, source="test")  # a quantizer's settings through its flat keys
    return cfg.model.validate()


# The config keys that choose the model's parts (not its sizes).
PART_KEYS = ("stem", "motion_moments", "frame_correlation", "action_head", "quantizer", "whiten", "prediction", "forward_target")


def recipe_parts(name: str) -> dict:
    """The model parts that recipe `name` chooses, to put on `small_model_config`."""
    model = recipe_config(name).model
    return {key: getattr(model, key) for key in PART_KEYS}


# -----------------------------------------------------------------------------
# H5 files

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


# -----------------------------------------------------------------------------
# Two ranks of a gloo process group


def run_two_ranks(fn, out_dir: Path, *args) -> list:
    """Run `fn(rank, *args)` in 2 processes joined in a gloo group on 127.0.0.1 and return
    what each returned (saved with torch.save, loaded here). `fn` must be a module-level
    function of an importable module (the processes are spawned)."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(free_port(), str(out_dir), fn, args), nprocs=2, join=True)
    return [torch.load(Path(out_dir) / f"rank{rank}.pt") for rank in range(2)]


def _rank_main(rank: int, port: int, out_dir: str, fn, args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.save(fn(rank, *args), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
