"""Training-time augmentation of latent windows, the same for every frame of a window.

    x = augment_windows(x, shift=4, crop=0.2, gain=0.1)   # (B, T, C, H, W)
    x = shift_windows(x, max_shift=4)    # each window rolled by its own (dy, dx)
    x = crop_windows(x, max_crop=0.2)    # each window cut to its own box, resized back
    x = gain_windows(x, max_gain=0.1)    # each window's channels scaled and offset alike

Every frame of a window is changed the same way, so what changed between frames (the
action) is still there, while where things are, how large they look and what their values
are is not: a code that read the action off the background, the layout or the colours stops
predicting well. The roll wraps around at the edges, which the frames of a window share too;
the crop keeps at least 1 - max_crop of each side and is resized back to the frame's size
(bilinear), so a move looks up to 1 / (1 - max_crop) times longer; the gain multiplies each
latent channel by 1 + u and adds v times the channel's std over the window (u, v uniform in
[-max_gain, max_gain]), the latent counterpart of a colour change. Each draws from torch's
global generator, which the training loop seeds per (seed, epoch, rank).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def augment_windows(x: torch.Tensor, shift: int = 0, crop: float = 0.0, gain: float = 0.0) -> torch.Tensor:
    """x (B, T, C, H, W) with the configured augmentations, each the same over a window; x itself
    when none is on."""
    return gain_windows(crop_windows(shift_windows(x, shift), crop), gain)


def shift_windows(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Roll each window of x (B, T, C, H, W) by a random (dy, dx) in [-max_shift, max_shift]^2."""
    if max_shift <= 0:
        return x
    offsets = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2)).tolist()
    return torch.stack([torch.roll(w, shifts=(dy, dx), dims=(-2, -1)) for w, (dy, dx) in zip(x, offsets)])


def crop_windows(x: torch.Tensor, max_crop: float) -> torch.Tensor:
    """Cut each window of x (B, T, C, H, W) to a random box, the same for its frames, whose sides
    keep between 1 - max_crop and all of the frame's, and resize it back to H x W."""
    if max_crop <= 0:
        return x
    b, t, c, h, w = x.shape
    keep = 1 - max_crop * torch.rand(b, 2)  # (B, 2): the fraction of the height and the width kept
    sizes = (keep * torch.tensor([h, w])).round().clamp_min(1).long()
    out = []
    for window, (bh, bw) in zip(x, sizes.tolist()):
        top, left = int(torch.randint(0, h - bh + 1, ())), int(torch.randint(0, w - bw + 1, ()))
        box = window[..., top : top + bh, left : left + bw].float()  # (T, C, bh, bw)
        out.append(F.interpolate(box, size=(h, w), mode="bilinear", align_corners=False).to(x.dtype))
    return torch.stack(out)


def gain_windows(x: torch.Tensor, max_gain: float) -> torch.Tensor:
    """Scale each latent channel of each window of x (B, T, C, H, W) by 1 + u and offset it by v
    times its std over the window, u and v uniform in [-max_gain, max_gain], the same for every
    frame of the window."""
    if max_gain <= 0:
        return x
    b, _, c = x.shape[:3]
    scale = 1 + max_gain * (2 * torch.rand(b, 1, c, 1, 1, device=x.device) - 1)
    offset = max_gain * (2 * torch.rand(b, 1, c, 1, 1, device=x.device) - 1)
    std = x.float().std(dim=(1, 3, 4), keepdim=True)  # (B, 1, C, 1, 1)
    return (x * scale + offset * std).to(x.dtype)
