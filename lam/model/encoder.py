"""The latent action encoder: stem (+ moments, + frame correlation) -> action head, for every transition of a window.

    patches (B, T, N, P) [and frames (B, T, C, H, W)] -> motion (B, T-1, E) -> z (B, T-1, K, D)

The action of t-1 -> t is computed from frames <= t only: stems, moments and the frame correlation
look at frames t-1 and t (with `action_offset` k, at frames max(0, t-k) and t: on sets where
one latent frame moves little, a move over k frames shows more), and the token head's temporal
attention is causal.
"""

from __future__ import annotations

import torch
from torch import nn

from lam.config import ModelConfig
from lam.model.heads import HEADS
from lam.model.stems import CORRELATIONS, MOMENTS, STEMS, MotionMoments, PixelMoments


class LatentActionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        self.num_codes, self.code_dim, self.offset = cfg.num_codes, code_dim, cfg.action_offset
        self.stem = STEMS[cfg.stem](cfg)
        patch_moments, pixel_moments = MOMENTS[cfg.motion_moments]
        self.moments = MotionMoments(cfg) if patch_moments else None
        self.pixel_moments = PixelMoments(cfg) if pixel_moments else None
        correlation = CORRELATIONS[cfg.frame_correlation]
        self.correlation = correlation(cfg) if correlation else None
        self.head = HEADS[cfg.action_head](cfg, code_dim)

    def motion(self, patches: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, N, P) [, frames (B, T, C, H, W)] -> (B, T-1, E): the stem's features of each
        transition, from frames t-1 and t, or with `action_offset` k > 1 from frames max(0, t-k) and t."""
        if self.offset == 1:
            return self._motion(patches, frames)
        b, t = patches.shape[:2]
        ref = (torch.arange(1, t, device=patches.device) - self.offset).clamp_min(0)  # (T-1,): the frame each t is compared with

        def pairs(x: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (B*(T-1), 2, ...): (frame ref_t, frame t)
            return torch.stack([x[:, ref], x[:, 1:]], dim=2).flatten(0, 1)

        motion = self._motion(pairs(patches), pairs(frames) if frames is not None else None)  # (B*(T-1), 1, E)
        return motion.view(b, t - 1, -1)

    def _motion(self, patches: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """The stem's features of each pair of consecutive frames: (B, T, N, P) -> (B, T-1, E)."""
        needs_change = self.stem.uses_change or self.moments is not None
        change = patches[:, 1:] - patches[:, :-1] if needs_change else None  # (B, T-1, N, P), computed once
        motion = self.stem(patches, change)
        if self.moments is not None:
            motion = motion + self.moments(change)
        for part, name in ((self.pixel_moments, "motion_moments: pixels"), (self.correlation, "frame_correlation")):
            if part is not None:
                if frames is None:
                    raise ValueError(f"{name} needs the latent frames: call the encoder with frames=")
                motion = motion + part(frames).to(motion.dtype)
        return motion

    def forward(self, patches: torch.Tensor, frames: torch.Tensor | None = None, head_view: bool = False):
        """z (B, T-1, K, D) from the patches (B, T, N, P) of a window and, with a frame correlation,
        its frames (B, T, C, H, W); with `head_view`, (z, z_head) where z_head is the same value
        computed from detached features, so that a loss on it trains only the head's output layers."""
        b, t = patches.shape[:2]
        shape = (b, t - 1, self.num_codes, self.code_dim)
        features = self.head.features(patches, self.motion(patches, frames))
        z = self.head.project(features).view(shape)
        if not head_view:
            return z
        return z, self.head.project(tuple(f.detach() for f in features)).view(shape)
