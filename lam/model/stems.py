"""Motion stems: what the encoder sees of each transition t-1 -> t before any attention.

A stem turns the patches of a window (B, T, N, P) into one motion vector per
transition (B, T-1, E). Local motion features look the same wherever the agent
is, so their pool over patches says what moved which way from the first training
step; attention alone has to learn positions first, and learns actions far more
slowly. `STEMS` maps the config's `stem` names to classes:

    pair   a per-patch MLP on (patch at t, patch at t-1), mean over patches
    diff   a per-patch MLP on the difference (patch at t minus at t-1), mean and max
           over patches: a static background cancels

`motion_moments` adds spatial moments of the difference, which are linear in how far and
which way an object moved, wherever it is (`MOMENTS` maps the config's names to parts):

    none            nothing added
    patches         `MotionMoments`: over the patch grid, of the patch features' difference
    pixels          `PixelMoments`: over the latent pixels, per channel, each divided by how
                    much that channel changed, so a small object's move (a pointer, an agent
                    one cell on) counts as much as a large one's, and is seen to a fraction of
                    a patch
    patches+pixels  both

`FrameCorrelation` (`frame_correlation: phase | cross | change | phase+change`) adds where the picture as a whole
moved: the correlation of frame t with frame t-1 under every shift, on the latent pixels
rather than on patches. Camera motion (a scrolling 2D world, an FPS view turning) and a
pointer's move show as a peak at their shift, which moments of a difference cannot say and
a per-patch MLP has to learn. `CORRELATIONS` maps the config's names to it:

    none          nothing added
    phase         phase correlation: the cross-power spectrum normalised to unit magnitude, so
                  every spatial frequency counts alike and the peak is sharp even on smooth pictures
    cross         plain circular cross-correlation: dominated by the largest, smoothest structures
    change        phase correlation of frames t-1 and t seen only where they differ (weighted
                  by the change): its peak is where a small object moved, a pointer on a
                  static page, which the whole picture's correlation cannot show (the static
                  background puts its peak at no motion)
    phase+change  both, each with its own projection, added
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from lam.config import FRAME_CORRELATION, MOTION_MOMENTS, STEM, ModelConfig


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


class PixelMoments(nn.Module):
    """Frames (B, T, C, H, W) -> (B, T-1, E): where the change of each transition is, at the
    resolution of the latent pixels, whatever its size.

    For the difference d = frame t - frame t-1 of each channel c: its moments sum(y d_c) and
    sum(x d_c) and its sum, each divided by the channel's change mass sum|d_c|; and the
    centroids (y, x) of what appeared (the positive part of d summed over channels) and of
    what went (the negative part). Coordinates span [-1, 1]. An object that moves by a
    vector v on a static background, with the same contrast against it everywhere, gives
    v / 2 in the moments of every channel it shows in (its mass counts twice in sum|d_c|:
    where it was and where it is) and v between the two centroids, wherever it is and
    however small; a static background cancels. An MLP maps the
    3C + 4 numbers to the stem's width: which way a move went depends on the sign of the
    object's contrast in each channel, so it is not a linear function of them. With
    `project=False` it has no weights and only computes `features` (a loss's target)."""

    MASS_FLOOR = 1e-3  # a transition with no change gives features of 0, not 0 / 0

    def __init__(self, cfg: ModelConfig, project: bool = True):
        super().__init__()
        g = torch.linspace(-1.0, 1.0, cfg.latent_size)
        ys, xs = torch.meshgrid(g, g, indexing="ij")
        self.register_buffer("pixel_coords", torch.stack([ys, xs]), persistent=False)  # (2, H, W)
        self.num_features = 3 * cfg.in_channels + 4
        self.mlp = _mlp(self.num_features, cfg.embed_dim) if project else None

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T-1, 3C + 4): y-moments (C), x-moments (C), sums (C), each over
        sum|d_c|; then the centroid (y, x) of what appeared and of what went."""
        return self.features_and_mass(frames)[0]

    def features_and_mass(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`features`, and each channel's change mass sum|d_c| (B, T-1, C) they were divided by
        (before the floor)."""
        with torch.autocast(frames.device.type, enabled=False):
            d = (frames[:, 1:] - frames[:, :-1]).float()  # (B, T-1, C, H, W)
            coords = self.pixel_coords.float()
            raw_mass = d.abs().sum(dim=(-2, -1))  # (B, T-1, C)
            mass = raw_mass.clamp_min(self.MASS_FLOOR)
            moments = torch.einsum("btchw,khw->btkc", d, coords) / mass[:, :, None]  # (B, T-1, 2, C)
            totals = d.sum(dim=(-2, -1)) / mass  # (B, T-1, C)
            centroids = []
            for part in (d.clamp_min(0).sum(dim=2), (-d).clamp_min(0).sum(dim=2)):  # appeared, went: (B, T-1, H, W)
                part_mass = part.sum(dim=(-2, -1)).clamp_min(self.MASS_FLOOR)[..., None]  # (B, T-1, 1)
                centroids.append(torch.einsum("bthw,khw->btk", part, coords) / part_mass)  # (B, T-1, 2)
            return torch.cat([moments.flatten(-2), totals, *centroids], dim=-1), raw_mass

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        features = self.features(frames)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, T-1, E)


class FrameCorrelation(nn.Module):
    """Frames (B, T, C, H, W) -> (B, T-1, E): the correlation surface of each transition,
    pooled to at most 32x32 shifts and projected to the stem's width.

    The surface of t-1 -> t is sum_c corr(frame t-1, frame t) over circular shifts (dy, dx),
    centred so that no motion is the middle, and scaled by its largest magnitude, so its
    shape, not the picture's contrast, carries the motion. Computed with FFTs in float32
    (outside autocast: half-precision FFTs need power-of-two sizes and lose the peak)."""

    GRID = 32  # shifts per side after pooling: finer than a patch, small enough for one linear map

    def __init__(self, cfg: ModelConfig, normalise_phase: bool, of_change: bool = False):
        super().__init__()
        self.normalise_phase, self.of_change = normalise_phase, of_change
        self.grid = min(self.GRID, cfg.latent_size)
        self.proj = nn.Linear(self.grid**2, cfg.embed_dim)

    def surface(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T-1, H, W): index [.., H//2 + dy, W//2 + dx] is how well frame t
        matches frame t-1 moved by dy down and dx right (circularly); each surface's largest
        magnitude is 1 (0 everywhere for a transition between flat frames). With `of_change`, of
        the two frames seen only where they differ (each weighted by the change there): index
        [.., H//2 + dy, W//2 + dx] is how well what changed in frame t matches what changed in
        frame t-1 moved by dy down and dx right (0 everywhere where nothing changed)."""
        with torch.autocast(frames.device.type, enabled=False):
            x = frames.float()
            if self.of_change:
                # Both frames seen only where the picture changed, weighted by how much: what moved
                # is there in frame t where it went and in frame t-1 where it was; a static page
                # cancels. (The positive and negative parts of the change would not do: with the
                # object's contrast of opposite sign in two channels, what appeared in one is what
                # went in the other, and the peak's sign is lost.)
                weight = (x[:, 1:] - x[:, :-1]).abs().mean(dim=2, keepdim=True)  # (B, T-1, 1, H, W)
                mass = weight.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
                later, earlier = (frame * weight for frame in (x[:, 1:], x[:, :-1]))
                # each channel's weighted mean removed where it is weighed: the object's shape, not its level
                later, earlier = (v - v.sum(dim=(-2, -1), keepdim=True) / mass * weight for v in (later, earlier))
            else:
                x = x - x.mean(dim=(-2, -1), keepdim=True)  # a brightness change is not motion
                later, earlier = x[:, 1:], x[:, :-1]
            cross = (torch.fft.rfft2(later) * torch.fft.rfft2(earlier).conj()).sum(dim=2)  # (B, T-1, H, W//2+1)
            if self.normalise_phase:
                cross = cross / cross.abs().clamp_min(1e-6)
            corr = torch.fft.irfft2(cross, s=x.shape[-2:])
            corr = torch.fft.fftshift(corr, dim=(-2, -1))
            return corr / corr.flatten(2).abs().amax(dim=-1)[..., None, None].clamp_min(1e-6)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        corr = self.surface(frames)  # (B, T-1, H, W)
        pooled = F.adaptive_avg_pool2d(corr.flatten(0, 1), self.grid)  # (B*(T-1), G, G)
        return self.proj(pooled.view(*corr.shape[:2], -1))  # (B, T-1, E)


class CorrelationSum(nn.Module):
    """Several frame correlations, each projected on its own, added."""

    def __init__(self, *parts: FrameCorrelation):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return sum(part(frames) for part in self.parts)


def _phase_and_change(cfg: ModelConfig) -> CorrelationSum:
    return CorrelationSum(FrameCorrelation(cfg, normalise_phase=True), FrameCorrelation(cfg, normalise_phase=True, of_change=True))


STEMS: dict[str, type[nn.Module]] = STEM.registry({"pair": PairStem, "diff": DiffStem})
# Which moments `motion_moments` adds: (patch-grid moments?, pixel moments?)
MOMENTS = MOTION_MOMENTS.registry({"none": (False, False), "patches": (True, False), "pixels": (False, True),
                                   "patches+pixels": (True, True)})
CORRELATIONS = FRAME_CORRELATION.registry({"none": None, "phase": partial(FrameCorrelation, normalise_phase=True),
                                           "cross": partial(FrameCorrelation, normalise_phase=False),
                                           "change": partial(FrameCorrelation, normalise_phase=True, of_change=True),
                                           "phase+change": _phase_and_change})
