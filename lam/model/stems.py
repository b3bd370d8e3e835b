"""Motion stems: what the encoder sees of each transition t-1 -> t before any attention.

A stem turns the patches of a window (B, T, N, P) into one motion vector per
transition (B, T-1, E). Local motion features look the same wherever the agent
is, so their pool over patches says what moved which way from the first training
step; attention alone has to learn positions first, and learns actions far more
slowly. `STEMS` maps the config's `stem` names to classes:

    pair   a per-patch MLP on (patch at t, patch at t-1), mean over patches
    diff   a per-patch MLP on the difference (patch at t minus at t-1), mean and max
           over patches: a static background cancels

`MotionMoments` (`motion_moments: true`) adds the spatial moments of the difference,
which are linear in how far and which way an object moved, wherever it is.
"""

from __future__ import annotations

import torch
from torch import nn

from lam.config import ModelConfig


def _mlp(width_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, width), nn.GELU(), nn.Linear(width, width))


class PairStem(nn.Module):
    uses_change = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mlp = _mlp(2 * cfg.patch_dim, cfg.embed_dim)

    def forward(self, patches: torch.Tensor, change: torch.Tensor | None) -> torch.Tensor:
        pairs = torch.cat([patches[:, 1:], patches[:, :-1]], dim=-1)  # (B, T-1, N, 2P)
        return self.mlp(pairs).mean(dim=2)  # (B, T-1, E)


class DiffStem(nn.Module):
    uses_change = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mlp = _mlp(cfg.patch_dim, cfg.embed_dim)
        self.pool = nn.Linear(2 * cfg.embed_dim, cfg.embed_dim)  # (mean, max) over patches -> E

    def forward(self, patches: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        local = self.mlp(change)  # (B, T-1, N, E)
        return self.pool(torch.cat([local.mean(dim=2), local.amax(dim=2)], dim=-1))  # (B, T-1, E)


class MotionMoments(nn.Module):
    """Spatial moments of the change: an object that moves by d shifts its mass by d, so
    sum_n position_n * (patch_n at t - patch_n at t-1) is linear in d, wherever it is, and a
    static background cancels. Projected with the mean change to the stem's width."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        g = torch.linspace(-1.0, 1.0, cfg.patch_grid)
        ys, xs = torch.meshgrid(g, g, indexing="ij")
        self.register_buffer("patch_coords", torch.stack([ys.flatten(), xs.flatten()], dim=-1), persistent=False)  # (N, 2)
        self.proj = nn.Linear(3 * cfg.patch_dim, cfg.embed_dim)  # (y-moment, x-moment, mean) of the change

    def forward(self, change: torch.Tensor) -> torch.Tensor:
        moments = torch.einsum("btnp,nk->btkp", change, self.patch_coords.to(change.dtype)) / change.shape[2]  # (B, T-1, 2, P)
        return self.proj(torch.cat([moments.flatten(-2), change.mean(dim=2)], dim=-1))  # (B, T-1, E)


STEMS: dict[str, type[nn.Module]] = {"pair": PairStem, "diff": DiffStem}
