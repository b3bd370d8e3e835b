"""Ray Data ingest: one execution per rank for the whole run, each rank reading its own share.

The driver builds an `IngestPlan` (`plan_ingest`): the small window indexes of the train and
val splits (`{file, start}` pairs; shuffling happens on the index, never on tensors) and how to
read them. Every training worker (rank) then starts one Ray Data dataset over its own share of
every epoch still to run (`RankBatches`), executed once and iterated for the rest of the run:
no split coordinator, no per-epoch planning, so the only start-up is the run's first. The
read tasks (h5py, in Ray worker processes) yield blocks of `read_batch_size` windows
`{"x": [B, T, C, H, W]}` in the files' stored dtype (float16 for VVAE latents, half the bytes
of float32 through Ray's object store); the training worker converts once, on its device. By
default a block is one per-worker training batch, handed over without a copy.

The stream of one rank, in order: epoch e's train batches, then (with a val split) its val
batches, then epoch e+1's, and so on. Each row carries its place (part, epoch, batch number,
and whether it ends its batch), so the worker puts batches together however Ray Data cut or
merged the blocks, and checks that each batch is the one it expects.

Reproducible order. Epoch e (0-based) of a run reads the train windows in
`epoch_order(n, seed, e)`, a permutation drawn from (seed, e) alone; rank r of W takes the
r-th of W equal slices of it (`IngestPlan.train_share`). So a run re-done with the same seed,
a run restored after a worker died and a run resumed by a new driver all see the same windows
in the same order on every rank: a resumed rank's stream starts at the epoch (and, from a
step checkpoint, at the batch) where it left off, without reading the batches before.
Ray Data emits the read tasks' blocks in task order (`preserve_order`), not in the order the
tasks happen to finish.

Equal shares. Every rank gets `n // W` train windows an epoch, so DDP ranks run the same
number of steps and never deadlock; when n is not a multiple of W, up to W - 1 windows of the
epoch are left out (different ones each epoch, since the order changes). The val split is cut
into W nearly equal runs of its index, each rank evaluating its own (validation needs no equal
step counts: it averages over all ranks at the end).

Bad windows. A window that cannot be read mid-run (NaN or Inf values written after the
manifest was made, or missed by its sampled check; damaged chunks) must not end a long run.
With `max_bad_windows` > 0 a read task leaves it out of its batch and reports it to the run's
ledger (`lam.train.ledger.RunLedger`); the training loop collects each epoch's reports,
prints one warning per window (file and latent frames) and logs the count as
`data/skipped_windows`. The read task that finds the run's (max_bad_windows + 1)-th distinct
bad window fails the run with that window's error; so does a train batch none of whose
windows can be read (every rank must train the same steps). With 0 the first bad window fails
the run.

Why not `streaming_split` (Ray Train's own dataset sharding, the previous version): it starts a
split coordinator and plans a new execution every epoch, a start-up that cost about half of a
short epoch (bench/README.md, "What the benchmarks changed"); and not
`from_items(rows).random_shuffle().map_batches(read)`, the first version: its all-to-all
shuffle is a barrier that runs tens of tiny tasks per epoch, for rows that a permutation in
one process orders in microseconds.
"""

from __future__ import annotations

import functools
import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

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
# Read tasks per epoch and rank (at most): a long run's plan stays small (its tasks are
# listed when the execution starts), and each task streams its blocks as it reads them.
MAX_READ_TASKS_PER_EPOCH = 32
# What a rank reads ahead of its training step by default (`prefetch_batches` 0), in bytes
# rather than batches: the iterator's read-ahead is also how many blocks are in flight at
# once, and a couple of blocks keep too few reads going to hide their latency, while a
# byte bound keeps memory the same whatever the batch and window sizes.
READ_AHEAD_BYTES = 256 * 2**20

TRAIN, VAL = 0, 1  # a row's part of the stream

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


@dataclass
class IngestPlan:
    """What every rank needs to read its share of a run: the window indexes and how to read them.
    Built on the driver (`plan_ingest`), sent to each worker; small (two ints per window)."""

    train: WindowIndex
    val: WindowIndex | None
    read_kwargs: dict  # data_dir, sequence_length, dataset_key, shape: `read_windows`' arguments
    window_bytes: int
    seed: int
    batch_size: int  # per worker
    rows_per_block: int
    max_bad_windows: int = 0
    labelled: dict[str, np.ndarray] | None = None  # the opt-in label head's transitions (train files)
    read_cpus: float = 1.0  # the CPUs the run's reads may hold at once, split evenly between its ranks

    def rank_read_cpus(self, world: int) -> tuple[float, float]:
        """(CPUs one rank's reads may hold at once, CPUs one read task takes). A rank never takes
        another rank's share: a rank blocked in a DDP all-reduce stops consuming, its read tasks
        pause on backpressure and keep their CPUs, and a rank without a CPU for its own reads
        would then never reach that all-reduce. So each rank gets its slice of `read_cpus`, and
        a task fits in it (a fraction of a CPU where there is less than one a rank)."""
        share = self.read_cpus / world
        return share, min(1.0, share)

    def share(self, part: int, epoch: int, rank: int, world: int) -> np.ndarray:
        """Window ids (into the part's index) that `rank` of `world` reads in `epoch`, in order."""
        if part == TRAIN:
            n = len(self.train)
            m = n // world
            return epoch_order(n, self.seed, epoch)[rank * m : (rank + 1) * m]
        return np.array_split(np.arange(len(self.val)), world)[rank] if self.val is not None else np.arange(0)

    def read_ahead_blocks(self, prefetch_batches: int = 0) -> int:
        """Blocks a rank's iterator keeps in flight: `prefetch_batches` batches' worth, or with 0
        as many as fill READ_AHEAD_BYTES (at least two batches' worth)."""
        blocks_per_batch = math.ceil(self.batch_size / self.rows_per_block)
        if prefetch_batches > 0:
            return prefetch_batches * blocks_per_batch
        return max(2 * blocks_per_batch, READ_AHEAD_BYTES // (self.rows_per_block * self.window_bytes))

    def batches(self, part: int, rank: int, world: int) -> int:
        """Batches `rank` reads of `part` in an epoch (before any left out for bad windows)."""
        size = len(self.train) // world if part == TRAIN else len(self.share(VAL, 0, rank, world))
        return math.ceil(size / self.batch_size)


def _read_task(plan_ref, part: int, epoch: int, rank: int, world: int, first_batch: int, num_batches: int,
               ledger: ray.actor.ActorHandle | None = None):
    """One read task: batches `first_batch ..` of the rank's share of `part` in `epoch`, each as
    blocks of `rows_per_block` windows tagged with their place (see `RankBatches`); with
    `labelled` transitions, train blocks also hold the windows' true actions, `labels` [B, T-1],
    -1 for the other transitions."""
    plan: IngestPlan = ray.get(plan_ref)
    index = plan.train if part == TRAIN else plan.val
    B = plan.batch_size
    ids = plan.share(part, epoch, rank, world)[first_batch * B : (first_batch + num_batches) * B]
    skipping = ledger is not None and plan.max_bad_windows > 0
    labelled = plan.labelled if part == TRAIN else None

    def leave_out(row: int, file: str, start: int, error: DataError) -> None:
        total = ray.get(ledger.add_bad_window.remote(epoch, file, start, str(error)))
        if total > plan.max_bad_windows:
            raise DataError(error.path, f"{error.problem} (the run's bad window number {total}, more than "
                                        f"--max_bad_windows {plan.max_bad_windows}; `lam validate --full` lists them all)")
        left_out.append(row)

    for b in range(num_batches):
        batch_ids = ids[b * B : (b + 1) * B]
        files = [index.files[f] for f in index.file_ids[batch_ids]]
        starts = index.starts[batch_ids].tolist()
        left_out: list[int] = []
        batch = read_windows({"file": files, "start": starts}, on_error=leave_out if skipping else None, **plan.read_kwargs)
        rows = len(batch["x"])
        if rows == 0:
            if part == TRAIN:  # every rank must run the same steps
                raise DataError(index.files[index.file_ids[batch_ids[0]]],
                                f"none of the {len(batch_ids)} windows of a training batch (epoch {epoch + 1}) can be read; "
                                "`lam validate --full` lists the bad windows")
            continue
        if labelled is not None:
            kept = [j for j in range(len(starts)) if j not in left_out]
            batch["labels"] = window_labels([files[j] for j in kept], [starts[j] for j in kept],
                                            plan.read_kwargs["sequence_length"], labelled, plan.read_kwargs["data_dir"])
        batch |= {"part": np.full(rows, part, np.int32), "epoch": np.full(rows, epoch, np.int32),
                  "batch": np.full(rows, first_batch + b, np.int32), "last": np.arange(rows) == rows - 1}
        for lo in range(0, rows, plan.rows_per_block):
            yield BlockAccessor.batch_to_block({k: v[lo : lo + plan.rows_per_block] for k, v in batch.items()})


class RankWindowSource(Datasource):
    """A Ray Data source over one rank's share of every epoch from `first_epoch` (from batch
    `skip_batches` of it) to `end_epoch`: each epoch's train batches, then its val batches."""

    def __init__(self, plan: IngestPlan, plan_ref, rank: int, world: int, first_epoch: int, end_epoch: int,
                 skip_batches: int = 0, ledger: ray.actor.ActorHandle | None = None):
        self.plan, self.plan_ref, self.rank, self.world, self.ledger = plan, plan_ref, rank, world, ledger
        self.spans = []  # (part, epoch, first batch, batches)
        for epoch in range(first_epoch, end_epoch):
            skip = skip_batches if epoch == first_epoch else 0
            self.spans.append((TRAIN, epoch, skip, plan.batches(TRAIN, rank, world) - skip))
            if plan.val is not None and len(plan.val):
                self.spans.append((VAL, epoch, 0, plan.batches(VAL, rank, world)))
        self.spans = [span for span in self.spans if span[3] > 0]
        # (part, epoch, first batch, batches) of each read task, in stream order
        per_task_min = math.ceil(WINDOWS_PER_READ_TASK / plan.batch_size)
        self.tasks = []
        for part, epoch, first, count in self.spans:
            per_task = max(per_task_min, math.ceil(count / MAX_READ_TASKS_PER_EPOCH))
            self.tasks += [(part, epoch, first + i, min(per_task, count - i)) for i in range(0, count, per_task)]

    @property
    def num_read_tasks(self) -> int:
        return len(self.tasks)

    def estimate_inmemory_data_size(self) -> int:
        return sum(count for *_, count in self.spans) * self.plan.batch_size * self.plan.window_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        # `parallelism` is ignored: the task size follows from the batch size (see __init__).
        tasks = []
        for part, epoch, first, count in self.tasks:
            read_fn = functools.partial(_read_task, self.plan_ref, part, epoch, self.rank, self.world, first, count, self.ledger)
            rows = count * self.plan.batch_size
            tasks.append(ReadTask(read_fn, BlockMetadata(num_rows=rows, size_bytes=rows * self.plan.window_bytes,
                                                         input_files=None, exec_stats=None)))
        return tasks


class RankBatches:
    """One rank's batches for the rest of the run, from one Ray Data execution.

        data = RankBatches(plan, rank, world, first_epoch, end_epoch, skip_batches, ledger)
        for epoch in range(first_epoch, end_epoch):
            for batch in data.train(epoch): ...   # exactly the same number on every rank
            for batch in data.val(epoch): ...

    A batch is `{"x": [b, T, C, H, W]}` (plus `labels` with the label head) as CPU tensors, in
    the stored dtype. Batches come in stream order; asking for another part or epoch than the
    next one is a bug, and raises."""

    def __init__(self, plan: IngestPlan, rank: int, world: int, first_epoch: int, end_epoch: int, skip_batches: int = 0,
                 ledger: ray.actor.ActorHandle | None = None, prefetch_batches: int = 0, pin_memory: bool = False):
        self.plan, self.rank, self.world, self.skip = plan, rank, world, skip_batches
        self.first_epoch = first_epoch
        source = RankWindowSource(plan, ray.put(plan), rank, world, first_epoch, end_epoch, skip_batches, ledger)
        self._blocks: Iterator[dict] = iter(())
        if source.spans:
            share, task_cpus = plan.rank_read_cpus(world)
            ds = ray.data.read_datasource(source, override_num_blocks=source.num_read_tasks, num_cpus=task_cpus)
            configure(ds, plan, share)
            self._blocks = iter(ds.iter_torch_batches(batch_size=None, prefetch_batches=plan.read_ahead_blocks(prefetch_batches),
                                                      device="cpu", pin_memory=pin_memory))
        self._pending: list[dict] = []  # pieces of the batch being put together
        self._ready: deque[tuple[tuple, dict]] = deque()

    def train(self, epoch: int) -> Iterator[dict]:
        """This rank's train batches of `epoch` (from a step checkpoint's epoch: those after it)."""
        first = self.skip if epoch == self.first_epoch else 0
        for number in range(first, self.plan.batches(TRAIN, self.rank, self.world)):
            tag, batch = self._next()
            if tag != (TRAIN, epoch, number):
                raise RuntimeError(f"rank {self.rank} expected train batch {number} of epoch {epoch + 1}, read {tag}")
            yield batch

    def val(self, epoch: int) -> Iterator[dict]:
        """This rank's val batches of `epoch` (none without a val split)."""
        if self.plan.val is None:
            return
        while self._peek() is not None and self._peek()[0][:2] == (VAL, epoch):
            yield self._next()[1]

    def close(self) -> None:
        """Stop the reads (a run that stops before its last epoch); the stream then ends."""
        close = getattr(self._blocks, "close", None)
        if close is not None:
            close()
        self._blocks, self._pending = iter(()), []
        self._ready.clear()

    def _peek(self):
        while not self._ready:
            block = next(self._blocks, None)
            if block is None:
                if self._pending:
                    self._finish()
                break
            self._add(block)
        return self._ready[0] if self._ready else None

    def _next(self) -> tuple[tuple, dict]:
        item = self._peek()
        if item is None:
            raise RuntimeError(f"rank {self.rank}: the run's data ended early")
        return self._ready.popleft()

    def _add(self, block: dict) -> None:
        """A block's rows, in runs of one batch each (usually the whole block is one)."""
        import torch  # here, not with the module: the read tasks' processes import it and need no torch

        places = torch.stack([block["part"], block["epoch"], block["batch"]], dim=1)
        changes = (places[1:] != places[:-1]).any(dim=1).nonzero().flatten().tolist()
        edges = [0, *(i + 1 for i in changes), len(places)]
        for lo, hi in zip(edges[:-1], edges[1:]):
            piece = {k: v[lo:hi] for k, v in block.items()}
            if self._pending and self._place(self._pending[0]) != self._place(piece):
                self._finish()  # the previous batch's last rows were left out as bad windows
            self._pending.append(piece)
            if bool(piece["last"][-1]):
                self._finish()

    @staticmethod
    def _place(piece: dict) -> tuple[int, int, int]:
        return int(piece["part"][0]), int(piece["epoch"][0]), int(piece["batch"][0])

    def _finish(self) -> None:
        import torch

        pieces, self._pending = self._pending, []
        keys = [k for k in pieces[0] if k in ("x", "labels")]
        batch = {k: pieces[0][k] if len(pieces) == 1 else torch.cat([p[k] for p in pieces]) for k in keys}
        self._ready.append((self._place(pieces[0]), batch))


def configure(ds: ray.data.Dataset, plan: IngestPlan, read_cpus: float) -> None:
    """The execution options of a rank's dataset, whose reads hold at most `read_cpus` CPUs at once."""
    ctx = ds.context
    # Ray Data merges a task's consecutive blocks until they pass target_max_block_size
    # (128 MiB by default) and slices blocks of 1.5x it or more. Just under one block,
    # every full block we yield is emitted as it is: never merged, never sliced (the rows'
    # places put batches together in any case).
    ctx.target_max_block_size = max(1, int(0.9 * plan.rows_per_block * plan.window_bytes))
    # Per-operator reservation splits the cluster between the operators of a pipeline;
    # ours has one (the read), and the reservation held it to about one task at a time
    # (bench/README.md). Memory stays bounded: Ray Data then caps its object-store use
    # at a quarter of the store.
    ctx.op_resource_reservation_enabled = False
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # blocks in read-task order
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(cpu=read_cpus)


def fixed_batch(plan: IngestPlan, rank: int, world: int) -> dict:
    """Test mode: this rank's part of the train split's first `batch_size x world` windows, in index
    order (read here, once: the spec's single-batch overfit check)."""
    n = min(plan.batch_size * world, len(plan.train)) // world
    ids = np.arange(rank * n, (rank + 1) * n)
    files = [plan.train.files[f] for f in plan.train.file_ids[ids]]
    batch = read_windows({"file": files, "start": plan.train.starts[ids].tolist()}, **plan.read_kwargs)
    import torch

    return {"x": torch.from_numpy(batch["x"])}


def plan_ingest(cfg: RunConfig, manifest: Manifest, read_cpus: float = 1.0) -> tuple[IngestPlan, dict[str, int]]:
    """The run's `IngestPlan` and its window counts ({"train": n, "val": n}).

    Train windows overlap by `train_stride`; val windows never overlap. In test mode the train
    split's first `batch_size` windows are the one batch (`fixed_batch`) and there is no val.
    `read_cpus`: the most CPUs the run's read tasks may hold at once, all ranks together (a
    plain run: what the cluster has beside its workers; a sweep's trial: its share, so that trials
    running side by side do not starve each other's reads)."""
    T, t = cfg.data.sequence_length, cfg.train
    train_index = build_window_index(manifest, "train", T, cfg.data.train_stride)
    val_index = build_window_index(manifest, "val", T) if manifest.splits.get("val") and not t.test_mode else None
    per_worker = t.batch_size // t.num_workers
    shape = manifest.latent_shape
    # Only a size estimate for Ray's planning; numpy has no bfloat16 dtype to ask, so a table.
    stored = next(iter(manifest.files.values()), {}).get("dtype", "float16")
    itemsize = {"float32": 4, "float64": 8}.get(stored, 2)
    plan = IngestPlan(
        train=train_index, val=val_index,
        read_kwargs={"data_dir": str(manifest.data_dir), "sequence_length": T, "dataset_key": manifest.dataset_key,
                     "shape": shape.as_tuple()},
        window_bytes=T * shape.channels * shape.height * shape.width * itemsize,
        seed=t.seed, batch_size=per_worker, rows_per_block=t.read_batch_size or per_worker,  # 0: one batch per block
        max_bad_windows=t.max_bad_windows,
        labelled=labelled_transitions(manifest, t.label_fraction, t.seed) or None,  # train files only
        read_cpus=read_cpus,
    )
    if t.test_mode:
        return plan, {"train": min(t.batch_size, len(train_index)), "val": 0}
    return plan, {"train": len(train_index), "val": len(val_index) if val_index is not None else 0}
