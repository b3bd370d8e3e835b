"""The loss's optional terms, each in one place: what it needs, what it adds, what it reports.

The loss of a training forward is the prediction error, plus the bottleneck's own terms,
plus every term of `LOSS_TERMS` that the config turns on, each weighted by its own knob:

    rollout  the decoder fed its own predictions (`rollout: multistep`)
    moved    the squared error over what moved (`motion_weight`, moved.py)
    label    a linear head from the action vector to the true action, on the few
             labelled transitions (opt-in, not unsupervised: `label_classes`)
    moments  a map from the action alone to its transition's pixel moments (`moments_weight`)
    latent   the forward model in a learned latent space (`forward_target: pixels+latent`,
             latent_target.py)

A term is a module: it owns whatever weights it trains (the label head, the moments head)
and reads what the forward computed from a `ForwardPass`. Adding a loss is a class here,
listed in `LOSS_TERMS`, and the config field that weighs it; the model builds the terms the
config turns on, adds their weighted values to the loss under `loss/NAME`, and logs their
unweighted parts under the names in `metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lam.config import ModelConfig
from lam.model.latent_target import FORWARD_TARGETS
from lam.model.moved import moved_error
from lam.model.stems import PixelMoments


@dataclass
class ForwardPass:
    """What one training forward computed, for the terms to read."""

    model: nn.Module  # the LatentActionModel (lam.py imports this module, not the other way round)
    x: torch.Tensor  # (B, T, C, H, W) the window
    patches: torch.Tensor  # (B, T, N, P) its patches
    actions: torch.Tensor  # (B, T-1, K, D) the bottleneck's output (straight-through), what the decoder got
    predictions: torch.Tensor  # (B, T-1, C, H, W) frames 1..T-1
    error: torch.Tensor  # (B, T-1, C, H, W) predictions minus the true frames, float32
    tokens: dict  # the decoder's hidden tokens and the context tokens it got (`LatentActionModel._predict`)
    labels: torch.Tensor | None  # (B, T-1) true actions, -1 where unknown (a label head only)
    label_scale: torch.Tensor | None  # 0-dim multiplier of label_weight (the label schedule)


class LossTerm(nn.Module):
    """One optional term: `forward(step)` -> (its weighted value, with grad; its unweighted
    metrics by the names in `metrics`)."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]

    @staticmethod
    def wanted(cfg: ModelConfig) -> bool:
        raise NotImplementedError

    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        self.config = cfg

    def metric_names(self, model: nn.Module) -> tuple[str, ...]:
        return self.metrics


class RolloutTerm(LossTerm):
    """The decoder fed its own predictions for rollout_horizon frames from ground-truth frames
    0..t0 (t0 = T-1-h), with the inferred actions; gradients flow through the fed-back
    predictions."""

    name, metrics = "rollout", ("rollout_loss",)

    @staticmethod
    def wanted(cfg: ModelConfig) -> bool:
        return cfg.rollout == "multistep"

    def forward(self, step: ForwardPass):
        settings = self.config.rollout_settings
        h, t = settings.rollout_horizon, step.x.shape[1]
        t0 = t - 1 - h  # last ground-truth frame of the rollout's context
        if t0 < 0:
            raise ValueError(f"rollout_horizon {h} needs windows of at least {h + 1} frames, got {t}")
        x, patches = step.x[:, : t0 + 1], step.patches[:, : t0 + 1]
        rolled = step.model._rollout(x, patches, step.actions, h, first=step.predictions[:, t0])
        loss = F.mse_loss(rolled.float(), step.x[:, t0 + 1:].float())  # frames t0+1..T-1
        return settings.rollout_weight * loss, {"rollout_loss": loss}


class MovedTerm(LossTerm):
    """The squared error averaged over each transition's moved pixels (moved.py)."""

    name, metrics = "moved", ("moved_loss",)

    @staticmethod
    def wanted(cfg: ModelConfig) -> bool:
        return cfg.motion_weight > 0

    def forward(self, step: ForwardPass):
        loss = moved_error(step.error, step.x)
        return self.config.motion_weight * loss, {"moved_loss": loss}


class LabelTerm(LossTerm):
    """Opt-in, not unsupervised: true actions of a few transitions train a linear map from the
    action vector to them (a few labels steer what the action codes carry)."""

    name, metrics = "label", ("label_loss", "label_accuracy")

    @staticmethod
    def wanted(cfg: ModelConfig) -> bool:
        return cfg.label_classes > 0

    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__(cfg, code_dim)
        self.head = nn.Linear(cfg.num_codes * code_dim, cfg.label_classes)

    def forward(self, step: ForwardPass):
        """Cross-entropy and accuracy over the transitions with a known label (both 0 when there
        is none). The head runs on every batch, labelled or not, so under DDP every rank uses
        its parameters in every step."""
        logits = self.head(step.actions.flatten(2).float())  # (B, T-1, classes)
        labels = step.labels
        if labels is None:
            labels = torch.full(logits.shape[:2], -1, dtype=torch.long, device=logits.device)
        known = labels >= 0
        count = known.sum().clamp_min(1)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.clamp_min(0).flatten(), reduction="none")
        loss = (ce * known.flatten()).sum() / count
        accuracy = (((logits.argmax(-1) == labels) & known).sum() / count).float()
        weight = self.config.label_weight if step.label_scale is None else self.config.label_weight * step.label_scale
        return weight * loss, {"label_loss": loss, "label_accuracy": accuracy}


class MomentsTerm(LossTerm):
    """A map from the action alone to the pixel moments of its transition's change."""

    name, metrics = "moments", ("moments_loss",)

    @staticmethod
    def wanted(cfg: ModelConfig) -> bool:
        return cfg.moments_weight > 0

    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__(cfg, code_dim)
        self.change_moments = PixelMoments(cfg, project=False)
        self.head = nn.Sequential(nn.Linear(cfg.num_codes * code_dim, cfg.embed_dim), nn.GELU(),
                                  nn.Linear(cfg.embed_dim, self.change_moments.num_features - 2))

    def forward(self, step: ForwardPass):
        """Squared error of the head's prediction from the actions against the pixel moments of
        each transition (`PixelMoments.features`) that do not depend on where the change is: the
        channels' moments and sums, and the vector from what went to what appeared (not the two
        centroids, which would ask the action where things are). Each is standardised over the
        batch (a pointer's move of a few pixels and a camera pan count alike); a channel's weigh
        by its share of the transition's change, so a channel that hardly changed, whose moments
        are a ratio of near-zeros, asks nothing of the action."""
        with torch.autocast(step.x.device.type, enabled=False):
            features, mass = self.change_moments.features_and_mass(step.x)  # (B, T-1, 3C + 4), (B, T-1, C): no weights
            appeared, went = features[..., -4:-2], features[..., -2:]
            target = torch.cat([features[..., :-4], appeared - went], dim=-1)  # (B, T-1, 3C + 2)
            share = mass / mass.sum(dim=-1, keepdim=True).clamp_min(PixelMoments.MASS_FLOOR)
            flat = target.reshape(-1, target.shape[-1])
            target = (target - flat.mean(0)) / flat.std(0, unbiased=False).clamp_min(1e-6)
            weight = torch.cat([share, share, share, torch.ones_like(share[..., :2])], dim=-1)  # (B, T-1, 3C + 2)
            err = self.head(step.actions.flatten(2).float()) - target
            loss = (weight * err.pow(2)).sum(-1).mean() / weight.sum(-1).mean().clamp_min(1e-6)
        return self.config.moments_weight * loss, {"moments_loss": loss}


class LatentTerm(LossTerm):
    """The forward model in a learned latent space: its weights are the forward target's part
    (`LatentActionModel.latent`, which also feeds the decoder); this term is its loss and its
    variance guard, weighted by latent_weight."""

    name = "latent"

    @staticmethod
    def wanted(cfg: ModelConfig) -> bool:
        return FORWARD_TARGETS[cfg.forward_target] is not None

    def metric_names(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(model.latent.loss_names)

    def forward(self, step: ForwardPass):
        latent = step.model.latent.losses(step.tokens["hidden"], step.tokens["context"], step.patches[:, 1:])
        weight = self.config.forward_target_settings.latent_weight
        return weight * (latent["latent_loss"] + latent["latent_spread"]), latent


# In the order their terms join the loss (after the prediction and the bottleneck).
LOSS_TERMS: tuple[type[LossTerm], ...] = (RolloutTerm, MovedTerm, LabelTerm, MomentsTerm, LatentTerm)


def build_terms(cfg: ModelConfig, code_dim: int) -> nn.ModuleDict:
    """The terms the config turns on, by name, in `LOSS_TERMS` order."""
    return nn.ModuleDict({term.name: term(cfg, code_dim) for term in LOSS_TERMS if term.wanted(cfg)})
