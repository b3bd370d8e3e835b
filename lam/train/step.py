"""One training step that skips itself, on the device, when its loss or gradient is not finite.

    step = TrainStep(model, raw_model, optimizer, scheduler, autocast, grad_clip=1.0)
    metrics, grad_norm, applied = step(x)          # applied: a device bool, never read here

A skipped step leaves parameters and optimizer state as they were (fused AdamW's
`found_inf`, the switch AMP's GradScaler uses), and the buffers its forward changed
(whitening statistics, VQ bookkeeping) are put back with `torch.where`, so one bad batch
cannot poison the model (VQ's revival then changes nothing either; it only counts the check). Nothing is read back to the host, so on a GPU the host queues
the next step while this one runs; `lam.train.health.SkippedSteps` reads the counts now
and then. The gradient norm is the same on every rank (DDP all-reduced the gradients),
so every rank skips alike.
"""

from __future__ import annotations

import torch

from lam.train.augment import augment_windows


class TrainStep:
    def __init__(self, model, raw_model, optimizer: torch.optim.Optimizer, scheduler, autocast, grad_clip: float,
                 augment: dict | None = None):
        if not optimizer.defaults.get("fused"):
            raise ValueError("TrainStep skips steps through the fused optimizer's found_inf: build AdamW with fused=True")
        self.model, self.raw_model, self.optimizer, self.scheduler = model, raw_model, optimizer, scheduler
        self.autocast, self.grad_clip = autocast, grad_clip
        self.augment = augment or {}  # keyword arguments of `augment_windows`: shift, crop, gain
        self.buffers = list(raw_model.buffers())
        self.last_indices: torch.Tensor | None = None  # the last step's code indices (B, T-1, K), for the epoch's counts

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                 label_scale: torch.Tensor | None = None) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Metrics, the pre-clip gradient norm and whether the step was applied (device tensors).
        `labels` and `label_scale` go to the model's label head (`LatentActionModel.forward`)."""
        self.model.train()
        x = augment_windows(x, **self.augment)
        saved = [b.detach().clone() for b in self.buffers]
        with self.autocast:
            out = self.model(x) if labels is None else self.model(x, labels, label_scale)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip).detach()
        applied = torch.isfinite(grad_norm) & torch.isfinite(out.loss.detach())
        self.optimizer.found_inf = (~applied).float()  # read by the fused step: 1 skips it
        self.optimizer.step()
        self.scheduler.step()  # the schedule follows the step count, skipped steps included
        with torch.no_grad():
            for b, s in zip(self.buffers, saved):
                b.copy_(torch.where(applied, b, s))
        self.raw_model.after_optimizer_step(applied)  # e.g. VQ's dead-code revival, identical on every rank
        self.last_indices = out.indices.detach()
        return out.metrics, grad_norm, applied
