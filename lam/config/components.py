"""The model's swappable components and the settings each one reads, declared once and torch-free.

Parts chosen by name without settings of their own (`stem`, `motion_moments`,
`frame_correlation`, `action_head`, `prediction`) are a `Choice`: their names, which the
config accepts and the model's registries are checked against on import.

A component kind (the quantizer, the forward target, the rollout loss) is chosen by the config key of its name
(`quantizer: gaussian`);
each choice declares here, next to its name, a dataclass of the settings it reads. Config checks,
the CLI's flags and help, search spaces and the model's registry (`lam.model.quantize.QUANTIZERS`,
built from `QUANTIZER.registry`) all read this one declaration, so the names cannot drift apart.

The chosen component's settings live in the model config (`ModelConfig.quantizer_settings`, an
instance of the chosen class; `forward_target_settings`, `rollout_settings`) and are set with flat keys, as every config key is: `--noise_std 0.3`,
`noise_std: 0.3` in YAML. A key that the chosen component does not read is an error naming both,
so a knob is never silently ignored (see `lam.config.apply_overrides`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lam.config.options import option


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class Settings:
    """Base of a choice's settings: `validate(model)` raises ValueError naming the first
    impossible setting (the model config is passed for settings bounded by its other fields)."""

    def validate(self, model) -> None:
        """A choice without settings of its own has nothing to check."""


@dataclass
class VQSettings(Settings):
    """vq: a learned codebook per code (the spec's bottleneck), num_embeddings entries each."""

    codebook_dim: int = option(128, "dimension of a code vector")
    commitment_weight: float = option(0.25, "commitment loss weight")
    dead_code_steps: int = option(100, "re-initialise a codebook entry unused for this many training steps (0: never)")

    def validate(self, model) -> None:
        _check(is_positive_int(self.codebook_dim), f"model.codebook_dim must be a positive integer, got {self.codebook_dim!r}")
        _check(self.commitment_weight >= 0, f"model.commitment_weight must be >= 0, got {self.commitment_weight!r}")
        _check(isinstance(self.dead_code_steps, int) and self.dead_code_steps >= 0,
               f"model.dead_code_steps must be an integer >= 0 (0 disables), got {self.dead_code_steps!r}")


@dataclass
class FSQSettings(Settings):
    """fsq: a fixed grid of num_embeddings points per code (split over a few dimensions, e.g.
    12 = 4 x 3 levels); nothing to learn or collapse, and no setting of its own."""

    def validate(self, model) -> None:
        _check(model.num_embeddings >= 2, f"model.num_embeddings must be >= 2 with the fsq quantizer, got {model.num_embeddings}")


@dataclass
class GaussianSettings(Settings):
    """gaussian: a continuous action vector with noise in training; its ids are num_embeddings
    k-means centroids per code, fitted on recent vectors."""

    codebook_dim: int = option(128, "dimension of a code vector")
    noise_std: float = option(0.5, "std of the noise added to the action vector in training (bounds what it can carry)")
    kl_weight: float = option(0.0, "weight of the prior term 0.5 mean(z^2) (0: none; whitening keeps the scale)")
    kmeans_samples: int = option(4096, "vectors per rank, from each epoch's last batches, that the k-means fit uses")

    def validate(self, model) -> None:
        _check(is_positive_int(self.codebook_dim), f"model.codebook_dim must be a positive integer, got {self.codebook_dim!r}")
        for name in ("noise_std", "kl_weight"):
            _check(getattr(self, name) >= 0, f"model.{name} must be >= 0, got {getattr(self, name)!r}")
        _check(isinstance(self.kmeans_samples, int) and self.kmeans_samples >= model.num_embeddings,
               f"model.kmeans_samples must be an integer >= num_embeddings ({model.num_embeddings}), got {self.kmeans_samples!r}")


@dataclass
class PixelsSettings(Settings):
    """pixels: the decoder predicts frame t's VVAE latents, and nothing else."""


@dataclass
class PixelsLatentSettings(Settings):
    """pixels+latent: also frame t's tokens as a moving average of a per-frame encoder sees them."""

    latent_weight: float = option(1.0, "weight of the latent prediction loss (and of its variance guard)")
    latent_depth: int = option(1, "transformer blocks of the per-frame encoder")
    latent_ema: float = option(0.99, "the target encoder's moving average after each step: target = ema * target + (1 - ema) * online")

    def validate(self, model) -> None:
        _check(self.latent_weight >= 0, f"model.latent_weight must be >= 0, got {self.latent_weight!r}")
        _check(is_positive_int(self.latent_depth), f"model.latent_depth must be a positive integer, got {self.latent_depth!r}")
        _check(0 <= self.latent_ema < 1, f"model.latent_ema must be in [0, 1), got {self.latent_ema!r}")


@dataclass
class NoRolloutSettings(Settings):
    """none: no rollout loss."""


@dataclass
class MultistepSettings(Settings):
    """multistep: the decoder fed its own predictions for rollout_horizon frames, their error a loss."""

    rollout_horizon: int = option(2, "frames predicted by the rollout loss")
    rollout_weight: float = option(1.0, "weight of the rollout loss")

    def validate(self, model) -> None:
        _check(is_positive_int(self.rollout_horizon), f"model.rollout_horizon must be a positive integer, got {self.rollout_horizon!r}")
        _check(self.rollout_weight >= 0, f"model.rollout_weight must be >= 0, got {self.rollout_weight!r}")
        _check(self.rollout_horizon + 1 <= model.max_frames, f"model.rollout_horizon ({self.rollout_horizon}) needs windows of "
               f"rollout_horizon + 1 frames, more than model.max_frames ({model.max_frames})")


@dataclass(frozen=True)
class ComponentKind:
    """One swappable part of the model: the config key that chooses it and, per choice, the
    settings class that choice reads."""

    key: str
    choices: dict  # name -> settings dataclass

    @property
    def settings_field(self) -> str:
        """The model config's field that holds the chosen component's settings."""
        return f"{self.key}_settings"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.choices)

    def setting_fields(self) -> dict[str, dataclasses.Field]:
        """Every setting any choice reads, by its flat key (the first declaration of a shared key)."""
        out: dict[str, dataclasses.Field] = {}
        for settings in self.choices.values():
            for f in dataclasses.fields(settings):
                out.setdefault(f.name, f)
        return out

    def users(self, key: str) -> list[str]:
        """The choices that read setting `key`."""
        return [name for name, settings in self.choices.items() if key in {f.name for f in dataclasses.fields(settings)}]

    def describe(self, key: str) -> str:
        """A setting's help line, naming the choices that read it."""
        return f"{', '.join(self.users(key))}: {self.setting_fields()[key].metadata['help']}"

    def registry(self, *classes, without_part: tuple[str, ...] = ()) -> dict:
        """The model's registry, name -> class, from classes that each name their settings class
        (`settings = VQSettings`): one class for every declared choice, keyed by the declared name;
        the choices in `without_part` build nothing (None)."""
        by_settings = {cls.settings: cls for cls in classes} | {self.choices[name]: None for name in without_part}
        missing = [name for name, settings in self.choices.items() if settings not in by_settings]
        if missing or len(by_settings) != len(self.choices):
            raise TypeError(f"{self.key} registry: no class for {missing} or a class with undeclared settings")
        return {name: by_settings[settings] for name, settings in self.choices.items()}


@dataclass(frozen=True)
class Choice:
    """A part of the model chosen by name that reads no settings of its own (the stem, the
    action head, ...): the names declared once, here; the model's registry for it is checked
    against them when its module is imported (`registry`), so the two cannot drift apart."""

    key: str
    names: tuple[str, ...]

    def registry(self, parts: dict) -> dict:
        """`parts` (name -> what the model builds for it) if it names exactly the declared
        choices, in their order; a TypeError naming the difference otherwise."""
        if tuple(parts) != self.names:
            raise TypeError(f"{self.key} registry names {list(parts)}, the config declares {list(self.names)}")
        return dict(parts)


STEM = Choice("stem", ("pair", "diff"))
MOTION_MOMENTS = Choice("motion_moments", ("none", "patches", "pixels", "patches+pixels"))
FRAME_CORRELATION = Choice("frame_correlation", ("none", "phase", "cross", "change", "phase+change"))
ACTION_HEAD = Choice("action_head", ("token", "token+motion", "motion"))
PREDICTION = Choice("prediction", ("residual", "shifted", "shifted-local"))

QUANTIZER = ComponentKind("quantizer", {"vq": VQSettings, "fsq": FSQSettings, "gaussian": GaussianSettings})

FORWARD_TARGET = ComponentKind("forward_target", {"pixels": PixelsSettings, "pixels+latent": PixelsLatentSettings})

ROLLOUT = ComponentKind("rollout", {"none": NoRolloutSettings, "multistep": MultistepSettings})

COMPONENT_KINDS: tuple[ComponentKind, ...] = (QUANTIZER, FORWARD_TARGET, ROLLOUT)


def setting_owners() -> dict[str, ComponentKind]:
    """Each flat settings key -> the component kind whose choices read it."""
    owners: dict[str, ComponentKind] = {}
    for kind in COMPONENT_KINDS:
        for key in kind.setting_fields():
            assert key not in owners, f"setting {key} is declared by two component kinds"
            owners[key] = kind
    return owners
