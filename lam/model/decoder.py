"""The latent action decoder: past frames plus actions -> the next frames.

Its input is frames 0..S-1 only, plus the quantized action of s -> s+1 added to
every token of frame s; with causal temporal attention the output at position s
depends on frames <= s and actions of transitions <= s -> s+1, and predicts frame
s+1. The target frame never enters the decoder, so everything it knows about frame
t beyond the past goes through the action bottleneck.
"""

from __future__ import annotations

import torch
from torch import nn

from lam.config import ModelConfig
from lam.model.transformer import SpaceTimeTransformer


class LatentActionDecoder(nn.Module):
    """Context patches (B, S, N, P) of frames 0..S-1 and actions (B, S, K, D) of transitions
    0->1 .. S-1->S  ->  (B, S, N, P) patch-space outputs, position s predicting frame s+1."""

    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        e = cfg.embed_dim
        self.proj_in = nn.Linear(cfg.patch_dim, e)
        self.pos_space = nn.Parameter(torch.zeros(cfg.num_patches, e))
        self.pos_time = nn.Parameter(torch.zeros(cfg.max_frames, e))
        self.action_proj = nn.Linear(cfg.num_codes * code_dim, e)
        self.transformer = SpaceTimeTransformer(e, cfg.decoder_depth, cfg.num_heads, cfg.mlp_ratio)
        self.proj_out = nn.Linear(e, cfg.patch_dim)

    def init_weights(self) -> None:
        nn.init.normal_(self.pos_space, std=0.02)
        nn.init.normal_(self.pos_time, std=0.02)
        # Zero output projection: the untrained decoder predicts "no change from frame t-1".
        nn.init.zeros_(self.proj_out.weight)

    def forward(self, patches: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        s = patches.shape[1]
        a = self.action_proj(actions.flatten(2).to(self.action_proj.weight.dtype))  # (B, S, E)
        x = self.proj_in(patches) + self.pos_space + self.pos_time[:s, None] + a[:, :, None]  # (B, S, N, E)
        return self.proj_out(self.transformer(x))  # (B, S, N, P)
