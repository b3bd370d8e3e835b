"""Ray Data ingest: a window index -> the epoch's order -> h5py reads in Ray Data read tasks.

`WindowDatasource` is a Ray Data source over the small window index
(`{file, start}` pairs; shuffling happens on the index, never on tensors). Ray
Data asks a source for its read tasks each time a dataset is executed, that is
once per epoch, so the source orders the index there and hands each read task
a slice of it; a task reads its windows with h5py and yields blocks of
`read_batch_size` windows `{"x": [B, T, C, H, W]}` in the files' stored dtype
(float16 for VVAE latents, half the bytes of float32 through Ray's object
store). The training worker converts once, on its device. By default a block
is one per-worker training batch, which the worker's iterator then hands over
without a copy (see `WindowDatasource`).

Reproducible order. Epoch e (0-based) of a run reads the windows in
`epoch_order(n, seed, e)`, a permutation drawn from (seed, e) alone, so a run
re-done with the same seed, a run restored after a worker died and a run
resumed by a new driver all see the same windows in the same order. The source
cannot count epochs itself: Ray Data calls `get_read_tasks` several times per
execution (on the driver when the dataset is built, then for planning and for
running each execution), and after a restart or a resume Ray Train builds a new
split coordinator holding a fresh copy of the source, which knows nothing of
the epochs before. So the training loop, which knows its epoch (restored from
the checkpoint), says it: the run's ledger (`lam.train.ledger.RunLedger`) holds the
epoch, rank 0 sets it before it starts iterating an epoch, and every `get_read_tasks`
call reads it.
Ray Train's `streaming_split` starts an epoch's execution only when every
worker has asked for that epoch, so the execution (and with it every call of
`get_read_tasks`) comes after rank 0 set the epoch and before it can set the
next one. A dataset iterated without anyone setting the epoch reads epoch 0's
order every time.

Within an epoch the order is kept by `data_config()`: with `preserve_order`
Ray Data emits the read tasks' blocks in task order (not in the order the tasks
happen to finish) and `streaming_split` deals them out to the workers in that
order, each to the worker that has received the fewest rows so far, ignoring
locality. Each worker then gets the same blocks in the same order every time.

Bad windows. A window that cannot be read mid-run (NaN or Inf values written after the
manifest was made, or missed by its sampled check; damaged chunks) must not end a long
run. With `max_bad_windows` > 0 a read task leaves it out of its block and reports it to
the run's ledger; the training loop collects each epoch's reports, prints one
warning per window (file and latent frames) and logs the count as
`data/skipped_windows`. The read task that finds the run's (max_bad_windows + 1)-th
distinct bad window fails the run with that window's error. With 0 the first bad window
fails it.

Why not `from_items(rows).random_shuffle().map_batches(read)`: that was the
first version, and it delivered far fewer windows/s (bench/README.md, "What the
benchmarks changed"). The all-to-all shuffle is a barrier (no read starts before
it ends) and it runs tens of tiny tasks per epoch, for rows that a permutation
in one process orders in microseconds.

Ray Train's DataConfig hands each worker its shard with
`streaming_split(num_workers, equal=True)`: every worker gets the same number of
rows, so DDP ranks run the same number of steps and never deadlock. When the
number of windows is not a multiple of the worker count, equal splitting drops
up to `num_workers - 1` windows of the epoch (different ones each epoch, since
the order changes every epoch).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import ray
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from lam.config import RunConfig
from lam.data.h5 import LatentShape
from lam.data.manifest import Manifest
from lam.data.windows import WindowIndex, WindowReader, build_window_index
from lam.errors import DataError
from lam.train.labels import labelled_transitions, window_labels

# Windows per read task (at least): enough that per-task scheduling costs little next
# to the reads (a 1 MB window takes ~0.5 ms), few enough that several tasks run at once.
WINDOWS_PER_READ_TASK = 64

# One reader (and so one open handle per file) per process: Ray reuses worker
# processes across tasks, so read tasks in the same process share it.
_READERS: dict[tuple, WindowReader] = {}


def _reader(data_dir: str, sequence_length: int, dataset_key: str, shape: tuple) -> WindowReader:
    key = (data_dir, sequence_length, dataset_key, shape, os.getpid())
    reader = _READERS.get(key)
    if reader is None:
        # out_dtype=None keeps the stored dtype; see the module docstring.
        reader = WindowReader(data_dir, sequence_length, dataset_key, LatentShape(*shape), out_dtype=None)
        _READERS[key] = reader
    return reader


def read_windows(rows: dict, data_dir: str, sequence_length: int, dataset_key: str, shape: tuple, on_error=None) -> dict:
    """`{"file": [B], "start": [B]}` -> `{"x": [B, T, C, H, W]}` in the stored dtype; with `on_error`,
    windows that cannot be read are reported to it and left out (see `WindowReader.read_batch`)."""
    reader = _reader(data_dir, sequence_length, dataset_key, shape)
    return {"x": reader.read_batch(rows["file"], rows["start"], on_error=on_error)}


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the `n` windows in epoch `epoch` (0-based) of a run seeded with `seed`.

    Child `epoch` of the seed's SeedSequence (numpy's way of deriving independent
    streams), so the order depends on (seed, epoch) only: not on when, where or
    how often it is drawn."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,))).permutation(n)


def _read_task(files: list[str], starts: list[int], rows_per_block: int, epoch: int = 0,
               ledger: ray.actor.ActorHandle | None = None, max_bad_windows: int = 0,
               labelled: dict[str, np.ndarray] | None = None, **read_kwargs):
    """One read task: its windows, in order, as blocks of `rows_per_block` windows (fewer where a
    bad window was left out); with `labelled` transitions (the opt-in label head), each block also
    holds the windows' true actions, `labels` [B, T-1], -1 for the other transitions."""
    left_out: set[int] = set()  # rows of the current block

    def leave_out(row: int, file: str, start: int, error: DataError) -> None:
        total = ray.get(ledger.add_bad_window.remote(epoch, file, start, str(error)))
        if total > max_bad_windows:
            raise DataError(error.path, f"{error.problem} (the run's bad window number {total}, more than "
                                        f"--max_bad_windows {max_bad_windows}; `lam validate --full` lists them all)")
        left_out.add(row)

    skipping = ledger is not None and max_bad_windows > 0
    for i in range(0, len(starts), rows_per_block):
        rows = {"file": files[i : i + rows_per_block], "start": starts[i : i + rows_per_block]}
        left_out.clear()
        batch = read_windows(rows, on_error=leave_out if skipping else None, **read_kwargs)
        if not len(batch["x"]):
            continue
        if labelled is not None:
            kept = [j for j in range(len(rows["start"])) if j not in left_out]
            batch["labels"] = window_labels([rows["file"][j] for j in kept], [rows["start"][j] for j in kept],
                                            read_kwargs["sequence_length"], labelled, read_kwargs["data_dir"])
        yield BlockAccessor.batch_to_block(batch)


class WindowDatasource(Datasource):
    """The windows of a `WindowIndex` as a Ray Data source; with `shuffle`, in the order of the
    epoch that the run's `ledger` shows (`epoch_order`), otherwise in index order.

    Every block holds `rows_per_block` windows (the last one of an epoch may hold
    fewer), and every read task a whole number of blocks, so when `rows_per_block`
    is the training batch each batch is exactly one block: Ray Data's batcher then
    hands the block over as it is, where a batch spanning two blocks would be
    concatenated (a copy of the whole batch, the largest cost of a Train worker's
    ingest before blocks were batches; bench/README.md).

    Ray Data may call `get_read_tasks` more than once per execution (planning, then
    running); every call covers every window exactly once, and every call of one
    execution reads the same epoch from the ledger, so all of them give the same tasks.
    """

    def __init__(self, index: WindowIndex, manifest: Manifest, shuffle: bool, rows_per_block: int,
                 seed: int = 0, ledger: ray.actor.ActorHandle | None = None, max_bad_windows: int = 0,
                 labelled: dict[str, np.ndarray] | None = None):
        self.files, self.file_ids, self.starts = list(index.files), index.file_ids, index.starts
        self.shuffle, self.rows_per_block = shuffle, rows_per_block
        self.seed, self.ledger, self.max_bad_windows, self.labelled = seed, ledger, max_bad_windows, labelled
        shape = manifest.latent_shape
        self.read_kwargs = {
            "data_dir": str(manifest.data_dir),
            "sequence_length": index.sequence_length,
            "dataset_key": manifest.dataset_key,
            "shape": shape.as_tuple(),
        }
        # Only a size estimate for Ray's planning; numpy has no bfloat16 dtype to ask, so a table.
        stored = next(iter(manifest.files.values()), {}).get("dtype", "float16")
        itemsize = {"float32": 4, "float64": 8}.get(stored, 2)
        self.window_bytes = index.sequence_length * shape.channels * shape.height * shape.width * itemsize
        self.rows_per_task = rows_per_block * math.ceil(WINDOWS_PER_READ_TASK / rows_per_block)

    @property
    def block_bytes(self) -> int:
        return self.rows_per_block * self.window_bytes

    @property
    def num_read_tasks(self) -> int:
        return math.ceil(len(self.starts) / self.rows_per_task)

    def estimate_inmemory_data_size(self) -> int:
        return len(self.starts) * self.window_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        # `parallelism` is ignored: the task size follows from the block size (see __init__).
        n = len(self.starts)
        epoch = ray.get(self.ledger.epoch.remote()) if self.ledger is not None else 0
        order = epoch_order(n, self.seed, epoch) if self.shuffle else np.arange(n)
        per_task = {"epoch": epoch, "ledger": self.ledger, "max_bad_windows": self.max_bad_windows, "labelled": self.labelled}
        tasks = []
        for first in range(0, n, self.rows_per_task):
            ids = order[first : first + self.rows_per_task]
            files = [self.files[f] for f in self.file_ids[ids]]
            starts = self.starts[ids].tolist()
            read_fn = functools.partial(_read_task, files, starts, self.rows_per_block, **per_task, **self.read_kwargs)
            metadata = BlockMetadata(num_rows=len(ids), size_bytes=len(ids) * self.window_bytes, input_files=None, exec_stats=None)
            tasks.append(ReadTask(read_fn, metadata))
        return tasks


def window_dataset(index: WindowIndex, manifest: Manifest, shuffle: bool, rows_per_block: int,
                   seed: int = 0, ledger: ray.actor.ActorHandle | None = None, max_bad_windows: int = 0,
                   labelled: dict[str, np.ndarray] | None = None) -> ray.data.Dataset:
    """A Ray dataset of windows in blocks of `rows_per_block`. With `shuffle`, every iteration
    reads the order of the epoch that the run's `ledger` (a `RunLedger`) shows (epoch 0
    without one). With a ledger and `max_bad_windows` > 0, windows that cannot be read are
    reported to it and left out; otherwise the first one fails the read. With `labelled` transitions
    ({file: target frames}), blocks carry the windows' true actions too (`lam.train.labels`)."""
    source = WindowDatasource(index, manifest, shuffle, rows_per_block, seed, ledger, max_bad_windows, labelled)
    ds = ray.data.read_datasource(source, override_num_blocks=source.num_read_tasks)
    # Ray Data merges a task's consecutive blocks until they pass target_max_block_size
    # (128 MiB by default) and slices blocks of 1.5x it or more. Just under one block,
    # every block we yield is emitted as it is: never merged, never sliced.
    ds.context.target_max_block_size = max(1, int(0.9 * source.block_bytes))
    # Per-operator reservation splits the cluster between the operators of a pipeline;
    # ours has one (the read), and the reservation held it to about one task at a time
    # (bench/README.md). Memory stays bounded: Ray Data then caps its object-store use
    # at a quarter of the store.
    ds.context.op_resource_reservation_enabled = False
    # Blocks in read-task order wherever the dataset is iterated. Ray Train replaces these
    # options with its DataConfig's when it splits the dataset: `data_config()` keeps this.
    ds.context.execution_options.preserve_order = True
    return ds


def build_datasets(cfg: RunConfig, manifest: Manifest,
                   ledger: ray.actor.ActorHandle | None = None) -> tuple[dict[str, ray.data.Dataset], dict[str, int]]:
    """The train and val datasets for a run, and their window counts.

    The train windows come in the order of `cfg.train.seed` and the epoch the run's `ledger`
    (a `RunLedger`) shows; whoever iterates the dataset sets the ledger's epoch before each
    epoch. Windows that cannot be read are reported to the ledger and left out, up to
    `cfg.train.max_bad_windows`.
    In test mode both are the same first `batch_size` windows of the train split,
    unshuffled: the spec's single-batch overfit check.
    """
    T = cfg.data.sequence_length
    train_index = build_window_index(manifest, "train", T, cfg.data.train_stride)
    if cfg.train.test_mode:
        n = min(cfg.train.batch_size, len(train_index))
        one_batch = WindowIndex(train_index.files, train_index.file_ids[:n], train_index.starts[:n], T)
        return {"train": window_dataset(one_batch, manifest, shuffle=False, rows_per_block=n)}, {"train": n, "val": 0}
    rows_per_block = cfg.train.read_batch_size or cfg.train.batch_size // cfg.train.num_workers  # 0: one batch per block
    skipping = {"ledger": ledger, "max_bad_windows": cfg.train.max_bad_windows}
    labelled = labelled_transitions(manifest, cfg.train.label_fraction, cfg.train.seed)  # train files only
    datasets = {"train": window_dataset(train_index, manifest, shuffle=True, rows_per_block=rows_per_block,
                                        seed=cfg.train.seed, labelled=labelled or None, **skipping)}
    sizes = {"train": len(train_index), "val": 0}
    if manifest.splits.get("val"):
        val_index = build_window_index(manifest, "val", T)  # non-overlapping windows for evaluation
        datasets["val"] = window_dataset(val_index, manifest, shuffle=False, rows_per_block=rows_per_block, **skipping)
        sizes["val"] = len(val_index)
    return datasets, sizes


def data_config(read_cpus: float | None = None) -> ray.train.DataConfig:
    """How Ray Train feeds the datasets to its workers: Ray Train's defaults, plus
    `preserve_order`, so every worker gets the same blocks in the same order every
    time the epoch is read (see the module docstring). `read_cpus`: the most CPUs the run's
    read tasks may hold at once (a sweep's trial: its share, so that trials running side by
    side do not starve each other's reads); None: what the cluster has free."""
    # Imported here, not with the module: the processes that run the read tasks and split the
    # datasets import this module for its source and read function, and need no Ray Train.
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    if read_cpus is not None:
        options.resource_limits = options.resource_limits.copy(cpu=read_cpus)
    return ray.train.DataConfig(execution_options=options)
