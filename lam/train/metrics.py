"""Metric means for the training loop: weighted over steps, averaged over ranks.

Names follow the spec exactly: `train/loss`, `train/mse_loss`, `train/mae_loss`,
`train/vq_loss`, `train/codebook_loss`, `train/commitment_loss`,
`train/codebook_usage`, the same under `val/`, `train/lr`, `train/grad_norm`,
`train/rollout_loss` (when rollout is on); plus `*/perplexity`, `*/action_ids_used`,
`*/action_perplexity`, `train/samples_per_s`, `epoch` and `step`. The model names its own
metrics (`LatentActionModel.metric_names`; codebook and commitment losses with the VQ
bottleneck). In an epoch's record, usage, perplexity and ids used are counted over the whole
epoch (`CodeCounter`), the same way for train and val.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from lam.model.quantize.base import action_radix, count_codes, usage_and_perplexity


class MeanTracker:
    """Weighted means of scalar metrics over steps, all-reduced across ranks on `compute`.

    Tensor metrics are summed where they live (on the GPU in GPU runs): `add` never waits
    for the device, so the host can queue the next step while this one runs. `compute` reads
    everything back at once.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.weight = 0.0

    def add(self, metrics: dict[str, torch.Tensor | float], weight: float, keep: torch.Tensor | None = None) -> None:
        """Add a step's metrics with `weight`; with `keep` (a device bool, e.g. "the step was
        applied") a step whose `keep` is false counts for nothing, decided on the device."""
        for k, v in metrics.items():
            v = v.detach().double() * weight if torch.is_tensor(v) else float(v) * weight
            if keep is not None:
                v = torch.where(keep, v, 0.0)  # not v * keep: a skipped step's metric may be NaN
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.weight = self.weight + (weight if keep is None else keep.double() * weight)

    def compute(self, prefix: str, keys: list[str], device) -> dict[str, float]:
        """Means over all ranks. `keys` must be the same list on every rank (a rank may have seen no batch)."""
        parts = [torch.as_tensor(self.sums.get(k, 0.0), dtype=torch.float64, device=device).reshape(()) for k in keys]
        values = torch.stack(parts + [torch.as_tensor(self.weight, dtype=torch.float64, device=device).reshape(())])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
        values = values.tolist()
        total = values[-1]
        if total == 0:
            return {}
        return {f"{prefix}/{k}": values[i] / total for i, k in enumerate(keys)}


class CodeCounter:
    """How often each code and each action id was chosen over an epoch, over all ranks.

    An epoch's usage and perplexity are read from these counts, not as a mean of each batch's:
    a batch of consecutive windows of one video (validation reads each file in order) holds
    few distinct actions where a shuffled training batch holds many, so per-batch means made
    validation look as if it used a third of the ids that training used. Counted over the
    epoch, train and val are measured alike. Counts stay on the device until `compute`.
    """

    def __init__(self, num_codes: int, num_embeddings: int, device):
        self.num_codes, self.num_embeddings = num_codes, num_embeddings
        self.codes = torch.zeros(num_codes, num_embeddings, dtype=torch.long, device=device)  # (K, M)
        self.actions = torch.zeros(num_embeddings**num_codes, dtype=torch.long, device=device)  # per action id

    def add(self, indices: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Count a step's `indices` (..., K) long on this rank; with `keep` false (a device bool,
        e.g. a skipped step), nothing, decided on the device."""
        codes = count_codes(indices, self.num_codes, self.num_embeddings)
        ids = (indices.reshape(-1, self.num_codes) * action_radix(self.num_codes, self.num_embeddings, indices.device)).sum(-1)
        actions = torch.bincount(ids, minlength=self.actions.numel())
        if keep is not None:
            codes, actions = torch.where(keep, codes, 0), torch.where(keep, actions, 0)
        self.codes += codes
        self.actions += actions

    def compute(self, prefix: str) -> dict[str, float]:
        """`prefix`/codebook_usage (fraction of the K x M choices used), /perplexity (exp of the
        entropy of each position's codes, mean over positions), /action_ids_used and
        /action_perplexity, over all ranks; call on every rank. Empty when nothing was counted."""
        counts = torch.cat([self.codes.reshape(-1), self.actions])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        codes, actions = counts[: self.codes.numel()].reshape(self.codes.shape), counts[self.codes.numel():]
        if int(actions.sum()) == 0:
            return {}
        usage, perplexity = usage_and_perplexity(codes)
        _, action_perplexity = usage_and_perplexity(actions[None])
        return {f"{prefix}/codebook_usage": float(usage), f"{prefix}/perplexity": float(perplexity),
                f"{prefix}/action_ids_used": int((actions > 0).sum()), f"{prefix}/action_perplexity": float(action_perplexity)}


# Above this share of an epoch spent waiting on data, rank 0 says so on the console.
DATA_WAIT_WARNING = 0.05


class EpochClock:
    """An epoch's throughput bookkeeping: time blocked on the data iterator, and the rate after
    the epoch's first step (which carries the pipeline's start-up and, in epoch 1, compile warm-up)."""

    def __init__(self, start: float) -> None:
        self.start, self.samples, self.data_wait = start, 0, 0.0
        self.loop_start = time.perf_counter()
        self.steady_start, self.steady_samples, self.loop_end = None, 0, None

    def record(self) -> dict:
        rate = self.samples / max(time.time() - self.start, 1e-9)
        steady_time = self.loop_end - self.steady_start if self.steady_start is not None else 0.0
        steady = (self.samples - self.steady_samples) / steady_time if self.samples > self.steady_samples else rate
        loop_time = max(self.loop_end - self.loop_start, 1e-9)
        return {"train/samples_per_s": rate, "train/steady_samples_per_s": steady,
                "train/data_wait_s": self.data_wait,  # rank 0's; ~0 when ingest keeps up with the model
                "train/data_wait_fraction": min(self.data_wait / loop_time, 1.0)}  # of the epoch's training loop


def data_wait_warning(record: dict, epoch: int) -> str | None:
    """The console's line when training waited on data for more than DATA_WAIT_WARNING of the epoch."""
    fraction = record.get("train/data_wait_fraction", 0.0)
    if fraction <= DATA_WAIT_WARNING:
        return None
    return (f"[lam] warning: epoch {epoch + 1}: training waited on data for {fraction:.0%} of the epoch "
            "(train/data_wait_fraction): more CPUs for reading (fewer --cpus_per_worker on a shared machine) "
            "or a larger --prefetch_batches would keep the model busy")


# The epoch line's metrics on the console (every metric goes to metrics.jsonl and wandb).
CONSOLE_METRICS = ("train/loss", "train/mse", "train/mae", "val/loss", "val/mse", "val/mae", "train/codebook_usage", "train/samples")


def epoch_summary(record: dict) -> str:
    """The epoch line: each loss with its weighted terms beside it (`loss/TERM`, which add up to
    it; a term that added nothing, e.g. the whitening penalty in validation, left out), so that a
    large bottleneck or label term is not read as the prediction error."""
    parts = []
    for key, value in record.items():
        if not key.startswith(CONSOLE_METRICS) or "/loss/" in key:
            continue
        terms = [f"{k.rsplit('/', 1)[1]} {v:.4g}" for k, v in record.items() if k.startswith(f"{key}/") and v != 0]
        parts.append(f"{key} {value:.4g}" + (f" ({' + '.join(terms)})" if len(terms) > 1 else ""))
    return ", ".join(parts)


def step_metric_name(key: str) -> str:
    """A metric's name in the records logged inside an epoch: the batch's code usage and
    perplexity say `batch`, as they are not the epoch's (`CodeCounter`)."""
    return f"train/batch_{key}" if key in ("codebook_usage", "perplexity") else f"train/{key}"
