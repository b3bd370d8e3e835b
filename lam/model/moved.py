"""The moved-pixels loss (`motion_weight`): the prediction's error where something moved, each
transition on its own; and the change-weighted error (`change_weight`).

A static screen is most of a GUI frame, and a moving pointer a few latent pixels: in the
plain MSE the pointer's error is drowned, and a decoder that leaves the pointer where it
was loses almost nothing. This term averages the squared error over each transition's
moved pixels on their own, so a pointer weighs as much as a panning view; the plain MSE
beside it keeps the rest of the frame predicted. The mask comes from the true frames t-1
and t and only weighs the loss: nothing of frame t reaches the model.
"""

from __future__ import annotations

import torch


def moved_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) frames -> (B, T-1, H, W) float: 1 where a latent pixel moved between t-1 and
    t: where its change (mean |x_t - x_t-1| over channels) is at least half the largest change of
    that transition, so the mask follows what moved most whatever the set's scale (a pointer's
    few pixels, or most of a panning view); a transition where nothing changed has an empty mask."""
    change = (x[:, 1:] - x[:, :-1]).float().abs().mean(2)  # (B, T-1, H, W)
    largest = change.flatten(2).amax(-1)[..., None, None]  # (B, T-1, 1, 1)
    return ((change >= 0.5 * largest) & (largest > 0)).float()


def moved_error(err: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The squared prediction error `err` (B, T-1, C, H, W) averaged over each transition's moved
    pixels (`moved_mask`) on their own, then over the transitions where something moved: a
    small moving object weighs as much as a whole moving view, and the plain MSE beside it
    keeps the rest of the frame predicted."""
    mask = moved_mask(x)  # (B, T-1, H, W)
    area = mask.sum(dim=(-2, -1))  # (B, T-1)
    per_transition = (mask[:, :, None] * err.float().pow(2)).sum(dim=(2, 3, 4)) / (area * err.shape[2]).clamp_min(1)
    return per_transition.sum() / (area > 0).sum().clamp_min(1)


def change_weighted_error(err: torch.Tensor, x: torch.Tensor, change_weight: float) -> torch.Tensor:
    """Squared error weighted towards what changed: w = 1 + change_weight * |x_t - x_t-1| / its
    mean over the batch, normalised by mean(w), so a static background (most of a frame) does
    not drown the few latent pixels where an action shows. err: (B, T-1, C, H, W); x: (B, T, ...)."""
    change = (x[:, 1:] - x[:, :-1]).float().abs()
    w = 1 + change_weight * change / change.mean().clamp_min(1e-8)
    return (w * err.pow(2)).mean() / w.mean()
