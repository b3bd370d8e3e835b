"""Where a run stands inside an epoch: what a step checkpoint holds so that a run resumed from
it ends with the same metrics and weights, bit for bit, as one never stopped.

An epoch checkpoint needs only the model, optimizer and scheduler: the next epoch seeds its
own random numbers and reads its own order (lam/train/loop.py). Halfway through an epoch more
is under way, and some of it differs between ranks:

- the random number generators (Python, NumPy, torch, CUDA), seeded per (epoch, rank) at the
  epoch's start and drawn from since (noise, augmentations);
- the model's buffers: most are the same on every rank, but some are each rank's own (the
  vectors the gaussian bottleneck remembers for its next k-means fit, VQ's recent outputs);
- the epoch's running sums (metric means, code counts, skipped steps), which become the
  epoch's record at its end;
- how many of the epoch's batches the rank has trained on.

`EpochPosition` gathers every rank's share on rank 0 (one `all_gather_object` per step
checkpoint, off the training step's path), which writes it into the checkpoint as
`position`; on resume each rank takes its own share back. The data need no position of
their own: every rank receives the same blocks in the same order whenever it reads an epoch
(lam/train/ingest.py), so a resumed rank reads the epoch again and skips the batches it
had trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from lam.train.health import SkippedSteps
from lam.train.metrics import CodeCounter, MeanTracker
from lam.train.saving import snapshot


@dataclass
class EpochProgress:
    """One rank's epoch so far: its running sums and the batches it trained on."""

    tracker: MeanTracker
    grad_norms: MeanTracker
    codes: CodeCounter
    skipped_before: int  # steps skipped before the epoch (the epoch's record counts its own)
    batches_done: int = 0

    def state_dict(self) -> dict:
        return {"tracker": tracker_state(self.tracker), "grad_norms": tracker_state(self.grad_norms),
                "codes": {"codes": self.codes.codes, "actions": self.codes.actions},
                "skipped_before": self.skipped_before, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict, device) -> None:
        load_tracker(self.tracker, state["tracker"], device)
        load_tracker(self.grad_norms, state["grad_norms"], device)
        self.codes.codes.copy_(state["codes"]["codes"])
        self.codes.actions.copy_(state["codes"]["actions"])
        self.skipped_before, self.batches_done = state["skipped_before"], state["batches_done"]


def tracker_state(tracker: MeanTracker) -> dict:
    return {"sums": dict(tracker.sums), "weight": tracker.weight}


def load_tracker(tracker: MeanTracker, state: dict, device) -> None:
    to_device = lambda v: v.to(device) if torch.is_tensor(v) else v  # noqa: E731
    tracker.sums = {k: to_device(v) for k, v in state["sums"].items()}
    tracker.weight = to_device(state["weight"])


def rng_state(device: torch.device) -> dict:
    """This process's random number generators, in types `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@dataclass
class EpochPosition:
    """A step checkpoint's `position`: the epoch under way (0-based), the batches each rank had
    trained on in it, and every rank's state (`rank_state`), by rank."""

    epoch: int
    batches_done: int
    ranks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "ranks": self.ranks}

    @classmethod
    def from_dict(cls, state: dict) -> "EpochPosition":
        return cls(state["epoch"], state["batches_done"], list(state["ranks"]))


def rank_state(model: torch.nn.Module, progress: EpochProgress, skips: SkippedSteps, device: torch.device) -> dict:
    """This rank's share of a step checkpoint, copied to host memory."""
    state = {"rng": rng_state(device), "buffers": dict(model.named_buffers()), "epoch": progress.state_dict(),
             "skips": {"total": skips.total, "in_a_row": skips.in_a_row, "longest": skips.longest, "reported": skips.reported}}
    return snapshot(state)  # a copy in host memory, as an asynchronous checkpoint takes it


def gather_rank_states(state: dict) -> list[dict]:
    """Every rank's `rank_state`, in rank order, on every rank (one collective)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def restore_rank_state(state: dict, model: torch.nn.Module, progress: EpochProgress, skips: SkippedSteps,
                       device: torch.device) -> None:
    """Put this rank's share of a step checkpoint back: after the epoch seeded itself, before its
    first step."""
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state["buffers"].items():
            buffers[name].copy_(value)
    progress.load_state_dict(state["epoch"], device)
    for name in ("total", "in_a_row", "longest"):
        getattr(skips, name).copy_(state["skips"][name])
    skips.reported = state["skips"]["reported"]
    set_rng_state(state["rng"], device)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for epoch `epoch` (0-based) on `rank`.

    Derived from (seed, epoch, rank) alone, so a restored or resumed run draws in an epoch
    exactly what the uninterrupted run drew there; ranks draw different numbers, as they see
    different samples. The data order's stream is child (epoch,) of the same seed
    (`lam.train.ingest.epoch_order`); this is child (epoch, rank), another stream."""
    words = np.random.SeedSequence(seed, spawn_key=(epoch, rank)).generate_state(2)  # 2 x uint32
    random.seed(int(words[0]) << 32 | int(words[1]))
    np.random.seed(int(words[0]))
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))
