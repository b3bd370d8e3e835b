"""Schedules over a run's steps: the learning rate (linear warm-up, then cosine decay to a floor)
and the weight of the opt-in label head (`label_schedule`, by name)."""

from __future__ import annotations

import math

from lam.config import LABEL_SCHEDULES


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Factor applied to the base learning rate at optimizer step `step` (0-based).

    Warm-up climbs linearly from 1/warmup_steps to 1 over `warmup_steps` steps; then
    a half cosine falls from 1 to `min_ratio` at `total_steps` and stays there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def label_multiplier(name: str, step: int, total_steps: int) -> float:
    """Factor applied to `label_weight` at optimizer step `step` (0-based) of `total_steps`:

        constant  1 throughout
        decay     a half cosine from 1 to 0: the labels steer the codes early, then the
                  unsupervised objective has the last word
        warmup    0 rising linearly to 1 over the first half, then 1: the encoder first
                  learns from prediction alone, then the labels name what it found
    """
    progress = min(1.0, step / max(1, total_steps - 1))
    if name == "constant":
        return 1.0
    if name == "decay":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "warmup":
        return min(1.0, 2.0 * progress)
    raise ValueError(f"unknown label schedule {name!r}; choose one of {', '.join(LABEL_SCHEDULES)}")

