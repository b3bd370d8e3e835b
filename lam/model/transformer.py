"""Factorised space-time transformer over a window of patch tokens `(B, T, N, E)`.

Full attention over all T*N tokens costs O((T*N)^2); for the default window
(8 frames x 256 patches) that is 4M token pairs per head per layer. Each block
here instead attends
  1. spatially, within one frame: (B*T) sequences of N tokens, bidirectional;
  2. temporally, per patch position: (B*N) sequences of T tokens, causal,
so frame t only ever sees frames <= t. That causality is what the latent
action model relies on to keep the target frame away from the decoder.
Every attention call goes through `F.scaled_dot_product_attention`, which picks
flash / memory-efficient kernels on GPUs. Pre-norm residual blocks, no dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# The fused attention kernels on CUDA launch one grid row per sequence, and a grid dimension holds
# at most 65535 rows; past that the call fails ("invalid argument", or cuDNN's "mha_graph.execute"),
# e.g. the temporal attention of 256 windows of 256 patches. Larger batches of sequences are
# attended in slices of at most this many (a power of two, so even batches split evenly).
MAX_SEQUENCES_PER_CALL = 32768


class Attention(nn.Module):
    """Multi-head self-attention over `(B', L, E)` sequences."""

    def __init__(self, dim: int, num_heads: int, causal: bool):
        super().__init__()
        self.num_heads, self.causal = num_heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, e = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.num_heads, e // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B', H, L, Dh)
        if b <= MAX_SEQUENCES_PER_CALL:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B', H, L, Dh)
        else:
            step = MAX_SEQUENCES_PER_CALL
            y = torch.cat([F.scaled_dot_product_attention(q[i : i + step], k[i : i + step], v[i : i + step], is_causal=self.causal)
                           for i in range(0, b, step)])
        return self.proj(y.transpose(1, 2).reshape(b, l, e))


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SpaceTimeBlock(nn.Module):
    """Spatial attention -> causal temporal attention -> MLP, each pre-norm with a residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim)
        self.attn_s = Attention(dim, num_heads, causal=False)
        self.norm_t = nn.LayerNorm(dim)
        self.attn_t = Attention(dim, num_heads, causal=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, e = x.shape  # (B, T, N, E)
        # Spatial: every frame on its own, so no information moves across time here.
        xs = x.reshape(b * t, n, e)  # (B*T, N, E)
        x = x + self.attn_s(self.norm_s(xs)).view(b, t, n, e)
        # Temporal: every patch position on its own, causal over frames.
        xt = x.transpose(1, 2).reshape(b * n, t, e)  # (B*N, T, E)
        x = x + self.attn_t(self.norm_t(xt)).view(b, n, t, e).transpose(1, 2)
        return x + self.mlp(self.norm_mlp(x))  # (B, T, N, E)


class SpaceTimeTransformer(nn.Module):
    """A stack of `SpaceTimeBlock`s and a final LayerNorm: `(B, T, N, E) -> (B, T, N, E)`."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList([SpaceTimeBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
