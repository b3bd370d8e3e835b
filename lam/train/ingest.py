"""Ray Data ingest: window index rows -> shuffled per epoch -> h5py reads in `map_batches`.

The dataset's rows are the small window index `{"file", "start"}`; shuffling
happens on those rows, never on tensors. `map_batches` turns a batch of rows into
`{"x": [B, T, C, H, W]}` in the files' stored dtype (float16 for VVAE latents,
half the bytes of float32 through Ray's object store); the training worker
converts once, on its device.

Ray Train's DataConfig hands each worker its shard with
`streaming_split(num_workers, equal=True)`: every worker gets the same number of
rows, so DDP ranks run the same number of steps and never deadlock. When the
number of windows is not a multiple of the worker count, equal splitting drops
up to `num_workers - 1` windows of the epoch (different ones each epoch, since
the order is reshuffled).
"""

from __future__ import annotations

import os

import ray

from lam.config import RunConfig
from lam.data.h5 import LatentShape
from lam.data.manifest import Manifest
from lam.data.windows import WindowIndex, WindowReader, build_window_index

# One reader (and so one open handle per file) per process: Ray reuses worker
# processes across tasks, so map_batches calls in the same process share it.
_READERS: dict[tuple, WindowReader] = {}


def _reader(data_dir: str, sequence_length: int, dataset_key: str, shape: tuple) -> WindowReader:
    key = (data_dir, sequence_length, dataset_key, shape, os.getpid())
    reader = _READERS.get(key)
    if reader is None:
        # out_dtype=None keeps the stored dtype; see the module docstring.
        reader = WindowReader(data_dir, sequence_length, dataset_key, LatentShape(*shape), out_dtype=None)
        _READERS[key] = reader
    return reader


def read_windows(rows: dict, data_dir: str, sequence_length: int, dataset_key: str, shape: tuple) -> dict:
    """map_batches UDF: `{"file": [B], "start": [B]}` -> `{"x": [B, T, C, H, W]}`."""
    reader = _reader(data_dir, sequence_length, dataset_key, shape)
    return {"x": reader.read_batch(rows["file"], rows["start"])}


def window_dataset(
    index: WindowIndex,
    manifest: Manifest,
    shuffle: bool,
    rows_per_read: int = 8,
) -> ray.data.Dataset:
    """A Ray dataset of windows. With `shuffle`, every epoch (every new iteration) sees a new order."""
    rows = index.rows()
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 64)))
    if shuffle:
        ds = ds.random_shuffle()
    shape = manifest.latent_shape
    return ds.map_batches(
        read_windows,
        batch_size=rows_per_read,
        batch_format="numpy",
        fn_kwargs={
            "data_dir": str(manifest.data_dir),
            "sequence_length": index.sequence_length,
            "dataset_key": manifest.dataset_key,
            "shape": (shape.channels, shape.t_latent, shape.height, shape.width),
        },
    )


def build_datasets(cfg: RunConfig, manifest: Manifest) -> tuple[dict[str, ray.data.Dataset], dict[str, int]]:
    """The train and val datasets for a run, and their window counts.

    In test mode both are the same first `batch_size` windows of the train split,
    unshuffled: the spec's single-batch overfit check.
    """
    T = cfg.data.sequence_length
    train_index = build_window_index(manifest, "train", T, cfg.data.train_stride)
    if cfg.train.test_mode:
        n = min(cfg.train.batch_size, len(train_index))
        one_batch = WindowIndex(train_index.files, train_index.file_ids[:n], train_index.starts[:n], T)
        return {"train": window_dataset(one_batch, manifest, shuffle=False)}, {"train": n, "val": 0}
    datasets = {"train": window_dataset(train_index, manifest, shuffle=True)}
    sizes = {"train": len(train_index), "val": 0}
    if manifest.splits.get("val"):
        val_index = build_window_index(manifest, "val", T)  # non-overlapping windows for evaluation
        datasets["val"] = window_dataset(val_index, manifest, shuffle=False)
        sizes["val"] = len(val_index)
    return datasets, sizes
