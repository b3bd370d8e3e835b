"""Training-time augmentation of latent windows, the same for every frame of a window.

    x = shift_windows(x, max_shift=4)   # (B, T, C, H, W), each window rolled by its own (dy, dx)

Every frame of a window moves by the same offset, so what changed between frames (the
action) is unchanged, while where things are (the background, a position) is not: a code
that read the action off the background stops predicting well. The roll wraps around at
the edges, which the frames of a window share too. Draws from torch's global generator,
which the training loop seeds per (seed, epoch, rank).
"""

from __future__ import annotations

import torch


def shift_windows(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Roll each window of x (B, T, C, H, W) by a random (dy, dx) in [-max_shift, max_shift]^2."""
    if max_shift <= 0:
        return x
    offsets = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2)).tolist()
    return torch.stack([torch.roll(w, shifts=(dy, dx), dims=(-2, -1)) for w, (dy, dx) in zip(x, offsets)])
