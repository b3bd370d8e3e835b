"""Adapters between VVAE latent frames and transformer patches.

A VVAE latent frame is `[C=16, 64, 64]`. `VVAEtoLAMAdapter` is a strided Conv2d
(kernel = stride = 4) that turns it into a 16x16 grid of 256-dim patches, i.e.
256 patch vectors of dim 256; `LAMtoVVAEAdapter` is the matching ConvTranspose2d.
Both work per frame: any leading dims (batch, time) are flattened and restored,
so `[B, T, C, H, W] <-> [B, T, N, P]`.
"""

from __future__ import annotations

import torch
from torch import nn


class VVAEtoLAMAdapter(nn.Module):
    """`[..., C, H, W] -> [..., N, P]` with N = patch_grid**2 patches of dim P = patch_dim."""

    def __init__(self, in_channels: int = 16, patch_dim: int = 256, latent_size: int = 64, patch_grid: int = 16):
        super().__init__()
        patch = latent_size // patch_grid
        self.in_channels, self.latent_size = in_channels, latent_size
        self.conv = nn.Conv2d(in_channels, patch_dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])  # (B*, C, H, W)
        x = self.conv(x)  # (B*, P, G, G)
        x = x.flatten(2).transpose(1, 2)  # (B*, N, P), patches in row-major order
        return x.reshape(*lead, *x.shape[1:])


class LAMtoVVAEAdapter(nn.Module):
    """`[..., N, P] -> [..., C, H, W]`, the inverse layout of `VVAEtoLAMAdapter`."""

    def __init__(self, out_channels: int = 16, patch_dim: int = 256, latent_size: int = 64, patch_grid: int = 16):
        super().__init__()
        patch = latent_size // patch_grid
        self.patch_grid = patch_grid
        self.deconv = nn.ConvTranspose2d(patch_dim, out_channels, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        g = self.patch_grid
        x = x.reshape(-1, *x.shape[-2:])  # (B*, N, P)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, g, g)  # (B*, P, G, G)
        x = self.deconv(x)  # (B*, C, H, W)
        return x.reshape(*lead, *x.shape[1:])
