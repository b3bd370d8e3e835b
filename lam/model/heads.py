"""Action heads: from the stem's motion to the pre-quantisation action vectors (B, T-1, K*D).

`HEADS` maps the config's `action_head` names to classes:

    token         an "action token" per frame, next to its N patch tokens in a space-time
                  transformer; it starts as a learned vector plus the stem's motion.
                  Spatial attention stays within a frame and temporal attention is causal,
                  so the token of frame t sees exactly frames <= t; its output, projected
                  to K*D, is the action of t-1 -> t (frame 0's is unused)
    token+motion  the token's projection plus a linear map of the layer-normed motion,
                  so codes see motion from the first step
    motion        the linear map of the motion alone: no transformer, so a code cannot
                  depend on what a frame looks like, only on what changed

A head is split in two: `features` (the body) and `project` (the output layers, linear
in the features). `project` on detached features gives the same value with gradients
into the output layers only, which the whitening penalty uses (see `whiten.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lam.config import ACTION_HEAD, ModelConfig
from lam.model.transformer import SpaceTimeTransformer


class TokenHead(nn.Module):
    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        e = cfg.embed_dim
        self.proj_in = nn.Linear(cfg.patch_dim, e)
        self.pos_space = nn.Parameter(torch.zeros(cfg.num_patches, e))
        self.pos_time = nn.Parameter(torch.zeros(cfg.max_frames, e))
        self.action_token = nn.Parameter(torch.zeros(e))
        self.transformer = SpaceTimeTransformer(e, cfg.encoder_depth, cfg.num_heads, cfg.mlp_ratio)
        self.to_action = nn.Linear(e, cfg.num_codes * code_dim)

    def init_weights(self) -> None:
        for p in (self.pos_space, self.pos_time, self.action_token):
            nn.init.normal_(p, std=0.02)
        # After the final LayerNorm tokens have unit variance; std E^-1/2 makes each output
        # dim ~ N(0, 1), the scale of a VQ codebook's initial entries.
        nn.init.normal_(self.to_action.weight, std=self.to_action.in_features**-0.5)

    def features(self, patches: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = patches.shape[1]
        x = self.proj_in(patches) + self.pos_space  # (B, T, N, E)
        motion = torch.cat([torch.zeros_like(motion[:, :1]), motion], dim=1)  # (B, T, E): frame 0 has no motion
        token = (self.action_token + motion).to(x.dtype)[:, :, None]  # (B, T, 1, E)
        x = torch.cat([x, token], dim=2) + self.pos_time[:t, None]  # (B, T, N+1, E)
        return (self.transformer(x)[:, 1:, -1],)  # (B, T-1, E): action tokens of frames 1..T-1

    def project(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.to_action(features[0])  # (B, T-1, K*D)


def _normed(motion: torch.Tensor) -> torch.Tensor:
    # layer norm: pooled motion features are small next to a transformer's normed output
    return F.layer_norm(motion.float(), motion.shape[-1:])


class TokenMotionHead(TokenHead):
    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__(cfg, code_dim)
        self.motion_to_code = nn.Linear(cfg.embed_dim, cfg.num_codes * code_dim)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.motion_to_code.weight, std=self.motion_to_code.in_features**-0.5)

    def features(self, patches: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*super().features(patches, motion), _normed(motion))

    def project(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.to_action(features[0]) + self.motion_to_code(features[1])


class MotionHead(nn.Module):
    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        self.motion_to_code = nn.Linear(cfg.embed_dim, cfg.num_codes * code_dim)

    def init_weights(self) -> None:
        nn.init.normal_(self.motion_to_code.weight, std=self.motion_to_code.in_features**-0.5)

    def features(self, patches: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (_normed(motion),)

    def project(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.motion_to_code(features[0])


HEADS: dict[str, type[nn.Module]] = ACTION_HEAD.registry({"token": TokenHead, "token+motion": TokenMotionHead, "motion": MotionHead})
