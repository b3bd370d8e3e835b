"""Metric means for the training loop: weighted over steps, averaged over ranks.

Names follow the spec exactly: `train/loss`, `train/mse_loss`, `train/mae_loss`,
`train/vq_loss`, `train/codebook_loss`, `train/commitment_loss`,
`train/codebook_usage`, the same under `val/`, `train/lr`, `train/grad_norm`,
`train/rollout_loss` (when rollout is on); plus `*/perplexity`,
`train/samples_per_s`, `epoch` and `step`. The model names its own metrics
(`LatentActionModel.metric_names`; codebook and commitment losses with the VQ bottleneck).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
