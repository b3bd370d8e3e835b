"""Ingest benchmark: windows/s delivered to a consumer that does nothing (no model).

Three pipelines read the same windows of the same files, in a new random order
every epoch, as `[B, T, C, H, W]` torch batches in the stored dtype (float16):

  ray_data    ours: `lam.train.ingest.RankBatches` over the plan `lam train` builds
              (`plan_ingest`), consumed inside a real Ray Train worker exactly as the training
              loop does: one Ray Data execution for all the epochs, `train(epoch)` each epoch.
  h5py_loop   baseline (a): one process, raw h5py reads into a preallocated batch; the
              limit of the storage path with no parallelism and no checks.
  dataloader  baseline (b): `torch.utils.data.DataLoader(num_workers=2, shuffle=True)` over
              an h5py `Dataset` (one cached handle per file per worker process), what a
              user would write first.

Each pipeline runs `epochs` full passes; the first is warm-up (worker start-up, page
cache) and the rate is over the remaining ones, each of which still includes its own
per-epoch start-up where the pipeline has one (DataLoader forks its workers every epoch; ours
starts once per run, so its later epochs start with batches already read ahead).
The files were just written, so reads come from the page cache: this measures the
CPU side of the path (HDF5, copies, serialisation, IPC), not the disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from lam.config import RunConfig
from lam.data.manifest import Manifest
from lam.data.windows import build_window_index


def _rate(epoch_stats: list[dict]) -> dict:
    """windows/s and MB/s over the epochs after the first (warm-up); also each epoch's start-up
    (time to its first batch) and the rate after it, which is what a long epoch would see."""
    timed = epoch_stats[1:] or epoch_stats
    seconds = sum(e["seconds"] for e in timed)
    windows = sum(e["windows"] for e in timed)
    nbytes = sum(e["bytes"] for e in timed)
    start_up = sum(e["first_batch_s"] for e in timed)
    return {
        "windows_per_s": windows / seconds,
        "mb_per_s": nbytes / seconds / 1e6,
        "first_epoch_s": epoch_stats[0]["seconds"],
        "epoch_start_up_s": start_up / len(timed),
        "after_start_up_windows_per_s": sum(e["windows"] - e["first_batch_windows"] for e in timed) / (seconds - start_up),
        "epochs": epoch_stats,
    }


class _EpochClock:
    """Times one epoch of batches: total seconds, windows, bytes, and the first batch's arrival."""

    def __init__(self):
        self.start, self.windows, self.bytes, self.first_batch = time.perf_counter(), 0, 0, None

    def batch(self, x: torch.Tensor) -> None:
        self.windows, self.bytes = self.windows + x.shape[0], self.bytes + x.numel() * x.element_size()
        if self.first_batch is None:
            self.first_batch = (time.perf_counter() - self.start, x.shape[0])

    def stats(self) -> dict:
        return {"seconds": time.perf_counter() - self.start, "windows": self.windows, "bytes": self.bytes,
                "first_batch_s": self.first_batch[0], "first_batch_windows": self.first_batch[1]}


# ----------------------------------------------------------------------------- baseline (a)


def h5py_loop(manifest: Manifest, cfg: RunConfig, epochs: int, seed: int = 0) -> dict:
    """One process, raw h5py: read the chunk rows each window spans and copy its frames into the batch."""
    index = build_window_index(manifest, "train", cfg.data.sequence_length, cfg.data.train_stride)
    T, B = index.sequence_length, cfg.train.batch_size
    files = [h5py.File(Path(manifest.data_dir) / rel, "r") for rel in index.files]
    datasets = [f[manifest.dataset_key] for f in files]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(epochs):
        clock = _EpochClock()
        order = rng.permutation(len(index))
        for b in range(0, len(order), B):
            ids = order[b : b + B]
            ds0 = datasets[index.file_ids[ids[0]]]
            _, c, t_lat, h, w = ds0.shape
            batch = np.empty((len(ids), T, c, h, w), dtype=ds0.dtype)
            for i, wid in enumerate(ids):
                ds, start = datasets[index.file_ids[wid]], int(index.starts[wid])
                first = start // t_lat
                block = ds[first : (start + T - 1) // t_lat + 1]  # (n, C, t_latent, H, W)
                for f in range(T):
                    k, j = divmod(start - first * t_lat + f, t_lat)
                    batch[i, f] = block[k, :, j]
            clock.batch(torch.from_numpy(batch))
        stats.append(clock.stats())
    for f in files:
        f.close()
    return _rate(stats)


# ----------------------------------------------------------------------------- baseline (b)


class H5WindowDataset(torch.utils.data.Dataset):
    """A map-style dataset of windows, the usual way: h5py handles opened lazily in each worker process."""

    def __init__(self, data_dir: str, key: str, windows: list[tuple[str, int]], sequence_length: int):
        self.data_dir, self.key, self.windows, self.T = data_dir, key, windows, sequence_length
        self.handles: dict[str, h5py.Dataset] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> torch.Tensor:
        rel, start = self.windows[i]
        if rel not in self.handles:
            self.handles[rel] = h5py.File(Path(self.data_dir) / rel, "r")[self.key]
        ds = self.handles[rel]
        t_lat = ds.shape[2]
        first = start // t_lat
        block = ds[first : (start + self.T - 1) // t_lat + 1]  # (n, C, t_latent, H, W)
        frames = block.transpose(0, 2, 1, 3, 4).reshape(-1, *block.shape[1:2], *block.shape[3:])  # (n*t, C, H, W)
        offset = start - first * t_lat
        return torch.from_numpy(np.ascontiguousarray(frames[offset : offset + self.T]))


def dataloader(manifest: Manifest, cfg: RunConfig, epochs: int, num_workers: int = 2, seed: int = 0) -> dict:
    index = build_window_index(manifest, "train", cfg.data.sequence_length, cfg.data.train_stride)
    windows = [(index.files[f], int(s)) for f, s in zip(index.file_ids, index.starts)]
    ds = H5WindowDataset(str(manifest.data_dir), manifest.dataset_key, windows, index.sequence_length)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.train.batch_size, shuffle=True, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    stats = []
    for _ in range(epochs):
        clock = _EpochClock()
        for x in loader:
            clock.batch(x)
        stats.append(clock.stats())
    return _rate(stats) | {"num_workers": num_workers}


# ----------------------------------------------------------------------------- ours


def _consume_loop(config: dict) -> None:
    """Ray Train worker: iterate the rank's batches the way lam.train.loop does, timing each epoch."""
    from lam.train.ingest import RankBatches

    data = RankBatches(config["plan"], 0, 1, 0, config["epochs"], prefetch_batches=config["prefetch_batches"])
    stats = []
    for epoch in range(config["epochs"]):
        clock = _EpochClock()
        for batch in data.train(epoch):
            clock.batch(batch["x"])
        stats.append(clock.stats())
    Path(config["out"]).write_text(json.dumps(stats))


def ray_data(manifest: Manifest, cfg: RunConfig, epochs: int, workdir: Path) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    from lam.runtime.cluster import init_ray
    from lam.train.ingest import plan_ingest
    from lam.train.launch import cpus_beside_workers

    init_ray()
    plan, _ = plan_ingest(cfg, manifest, cpus_beside_workers(cfg))  # as `lam train` plans it: every CPU beside the worker
    plan.val = None  # the train windows alone, as the other pipelines read
    out = workdir / "ray_ingest.json"
    TorchTrainer(
        _consume_loop,
        train_loop_config={"epochs": epochs, "plan": plan, "prefetch_batches": cfg.train.prefetch_batches, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="bench_ingest", storage_path=str(workdir / "ray_runs"),
                                       logging_config=LoggingConfig(log_level="WARNING")),
    ).fit()
    return _rate(json.loads(out.read_text())) | {"read_batch_size": cfg.train.read_batch_size,
                                                  "prefetch_batches": cfg.train.prefetch_batches}
