"""Typed run configuration: dataclasses with the spec's defaults, loadable from YAML, overridable from the CLI.

A run's config has three sections: data (DataConfig: where the latents are, how windows
are cut), model (ModelConfig: the latent action model's parts and sizes) and train
(TrainConfig: optimisation, scale-out, checkpoints, logging); a sweep adds SweepConfig.
Every leaf field is also a CLI flag of the same flat name (`--embed_dim`, `--data_dir`),
so the spec's commands work as written, and its one-line description (`option(help=...)`)
is the flag's help text. A YAML file may nest the sections or use flat keys:

    data: {data_dir: demo_data, sequence_length: 8}        # or flat: data_dir: demo_data
    model: {embed_dim: 256, quantizer: fsq}
    train: {batch_size: 16, learning_rate: 3.0e-4}

Precedence: dataclass defaults < a recipe (`lam.recipes`) < --config YAML < CLI flags.
A component choice (stem, action head, quantizer) is a string naming a class in the
model's registries (`lam.model`); the valid names are listed here, in the field's
`choices`, so a config is checked without importing torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lam.config.options import option
from lam.config.train import ACTION_CHECK_METRICS, LABEL_SCHEDULES, SweepConfig, TrainConfig  # noqa: F401  (SweepConfig: re-exported)
from lam.errors import UserError


# -----------------------------------------------------------------------------
# The three sections


@dataclass
class DataConfig:
    data_dir: str = option("", "folder of VVAE latent H5 files (searched recursively)")
    manifest_path: str = option("", "split manifest written by `lam manifest`; empty: DATA_DIR/manifest.json")
    sequence_length: int = option(8, "latent frames per window (8 = 4 chunks = 4 s of video)")
    stride: int = option(0, "frames between the starts of training windows; 0: sequence_length (no overlap)")
    # (the H5 dataset key comes from the manifest: `lam manifest --dataset_key`)

    @property
    def manifest(self) -> str:
        return self.manifest_path or str(Path(self.data_dir) / "manifest.json")

    @property
    def train_stride(self) -> int:
        return self.stride or self.sequence_length


STEMS = ("pair", "diff")
MOMENTS = ("none", "patches", "pixels", "patches+pixels")
CORRELATIONS = ("none", "phase", "cross")
ACTION_HEADS = ("token", "token+motion", "motion")
QUANTIZERS = ("vq", "fsq", "gaussian")
PREDICTIONS = ("residual", "shifted", "shifted-local")
FORWARD_TARGETS = ("pixels", "pixels+latent")


@dataclass
class ModelConfig:
    """The latent action model. Built with no arguments, it is the spec's model: 16-channel
    64x64 latents, 256 patches of dim 256, a 512-wide transformer with 3 encoder and 3
    decoder layers, 3 VQ codes of dim 128 from 12-entry codebooks (12^3 = 1,728 actions)."""

    in_channels: int = option(16, "channels of a latent frame")
    latent_size: int = option(64, "height and width of a latent frame")
    patch_dim: int = option(256, "dimension of a patch vector (the input adapter's output channels)")
    patch_grid: int = option(16, "patches per side: a frame becomes patch_grid^2 patches")
    embed_dim: int = option(512, "transformer width")
    num_heads: int = option(8, "attention heads (must divide embed_dim)")
    encoder_depth: int = option(3, "encoder transformer layers")
    decoder_depth: int = option(3, "decoder transformer layers")
    mlp_ratio: float = option(4.0, "transformer MLP width as a multiple of embed_dim")
    stem: str = option("pair", "what the encoder's motion stem sees: pair = (patch at t, patch at t-1), "
                       "diff = their difference (a static background cancels)", choices=STEMS)
    motion_moments: str = option("none", "add spatial moments of the frame difference to the stem's features (linear in how far "
                                 "and which way things moved): patches = over the patch grid, of the patch features; "
                                 "pixels = over the latent pixels, per channel, scaled by how much changed (a small "
                                 "object's move anywhere in the frame); patches+pixels = both; none = off (true/false "
                                 "in older configs: patches/none)", choices=MOMENTS, aliases={"true": "patches", "false": "none"})
    frame_correlation: str = option("none", "add where the whole picture moved to the stem's features: the correlation of "
                                    "frames t-1 and t under every shift (camera motion, scrolling, a pointer); "
                                    "phase = phase correlation (sharp peaks), cross = plain cross-correlation, none = off",
                                    choices=CORRELATIONS)
    action_head: str = option("token", "where an action comes from: token = the encoder transformer's action token, "
                              "token+motion = that plus a linear map of the stem's features, "
                              "motion = the stem's features alone (no encoder transformer)", choices=ACTION_HEADS)
    action_offset: int = option(1, "the frame the encoder compares frame t with for the action of t-1 -> t: t - action_offset (the "
                                "window's first where that is before it); 1: the previous frame; more, for sets where one latent frame "
                                "moves little. The decoder still predicts t from t-1")
    quantizer: str = option("vq", "the action bottleneck: vq = learned codebooks (the spec), "
                            "fsq = finite scalar quantisation (a fixed grid; nothing to collapse), "
                            "gaussian = a continuous vector plus noise in training, ids from k-means", choices=QUANTIZERS)
    whiten: bool = option(False, "whiten each code's vector before quantising (batch statistics in training, "
                          "running ones in evaluation), so transitions spread over the codes from the first step")
    codebook_dim: int = option(128, "vq, gaussian: dimension of a code vector")
    num_embeddings: int = option(12, "choices per code (vq: codebook entries; fsq: grid points; gaussian: k-means centroids); "
                                 "actions = num_embeddings^num_codes")
    num_codes: int = option(3, "codes per action")
    commitment_weight: float = option(0.25, "vq: commitment loss weight")
    dead_code_steps: int = option(100, "vq: re-initialise a codebook entry unused for this many training steps (0: never)")
    noise_std: float = option(0.5, "gaussian: std of the noise added to the action vector in training (bounds what it can carry)")
    kl_weight: float = option(0.0, "gaussian: weight of the prior term 0.5 mean(z^2) (0: none; whitening keeps the scale)")
    kmeans_samples: int = option(4096, "gaussian: vectors per rank, from each epoch's last batches, that the k-means fit uses")
    prediction: str = option("residual", "what the decoder's output is added to: residual = frame t-1, "
                             "shifted = frame t-1 moved by shifts that a linear map of the action picks (camera motion, scrolling), "
                             "shifted-local = that, only where a mask from the decoder says (a moving pointer or agent)",
                             choices=PREDICTIONS)
    change_weight: float = option(0.0, "weight the prediction loss towards latent pixels that changed: 1 + change_weight * |x_t - x_t-1| / its mean (0: plain MSE)")
    forward_target: str = option("pixels", "what the decoder predicts of frame t: pixels = its VVAE latents; pixels+latent = those and, "
                                 "from its hidden tokens, frame t's tokens as a moving average of a per-frame encoder sees them "
                                 "(a forward model in a learned latent space)", choices=FORWARD_TARGETS)
    latent_weight: float = option(1.0, "pixels+latent: weight of the latent prediction loss (and of its variance guard)")
    latent_depth: int = option(1, "pixels+latent: transformer blocks of the per-frame encoder")
    latent_ema: float = option(0.99, "pixels+latent: the target encoder's moving average after each step: target = ema * target + "
                               "(1 - ema) * online")
    motion_weight: float = option(0.0, "weight of a second squared error, averaged over the latent pixels that moved between t-1 "
                                  "and t in each transition on its own (a pointer of a few pixels counts as much as a pan); "
                                  "added to the plain MSE, which it leaves as it is (0: off)")
    moments_weight: float = option(0.0, "weight of a second prediction from the action alone: the pixel moments of the change "
                                   "t-1 -> t that do not depend on where it is (see motion_moments: pixels), standardised over "
                                   "the batch, so a small object's move asks as much of the action as the whole view's (0: off)")
    use_rollout: bool = option(False, "add a multi-step rollout loss (the decoder fed its own predictions)")
    rollout_horizon: int = option(2, "frames predicted by the rollout loss")
    rollout_weight: float = option(1.0, "weight of the rollout loss")
    max_frames: int = option(64, "longest window the model accepts (length of its temporal position table)")
    label_classes: int = option(0, "true-action classes of the optional label head on the action vector (0: no head; --label_fraction sets it from the data)")
    label_weight: float = option(1.0, "weight of the label head's cross-entropy (only with label_classes > 0)")

    @property
    def num_patches(self) -> int:
        return self.patch_grid**2

    @property
    def patch_size(self) -> int:
        """Side of the square of latent pixels that one patch covers."""
        return self.latent_size // self.patch_grid

    @property
    def num_actions(self) -> int:
        return self.num_embeddings**self.num_codes

    def validate(self) -> "ModelConfig":
        """Raise ValueError naming the first impossible setting; return self so it chains."""
        positive = [
            "in_channels", "latent_size", "patch_dim", "patch_grid", "embed_dim", "num_heads",
            "encoder_depth", "decoder_depth", "codebook_dim", "num_embeddings", "num_codes",
            "rollout_horizon", "latent_depth", "action_offset",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"model.{f.name} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}")
        if not 0 <= self.latent_ema < 1:
            raise ValueError(f"model.latent_ema must be in [0, 1), got {self.latent_ema!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_heads ({self.num_heads})")
        if self.latent_size % self.patch_grid:
            raise ValueError(f"model.latent_size ({self.latent_size}) must be divisible by model.patch_grid ({self.patch_grid})")
        if self.quantizer == "fsq" and self.num_embeddings < 2:
            raise ValueError(f"model.num_embeddings must be >= 2 with the fsq quantizer, got {self.num_embeddings}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"model.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not isinstance(self.label_classes, int) or self.label_classes < 0:
            raise ValueError(f"model.label_classes must be >= 0, got {self.label_classes!r}")
        for name in ("commitment_weight", "noise_std", "kl_weight", "change_weight", "motion_weight", "moments_weight", "rollout_weight",
                     "label_weight", "latent_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.kmeans_samples, int) or self.kmeans_samples < self.num_embeddings:
            raise ValueError(f"model.kmeans_samples must be an integer >= num_embeddings ({self.num_embeddings}), "
                             f"got {self.kmeans_samples!r}")
        if not isinstance(self.dead_code_steps, int) or self.dead_code_steps < 0:
            raise ValueError(f"model.dead_code_steps must be an integer >= 0 (0 disables), got {self.dead_code_steps!r}")
        if not isinstance(self.max_frames, int) or self.max_frames < 2:
            raise ValueError(f"model.max_frames must be an integer >= 2, got {self.max_frames!r}")
        if self.use_rollout and self.rollout_horizon + 1 > self.max_frames:
            raise ValueError(f"model.rollout_horizon ({self.rollout_horizon}) needs windows of rollout_horizon + 1 frames, "
                             f"more than model.max_frames ({self.max_frames})")
        return self


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "RunConfig":
        return apply_overrides(cls(), raw, source=source)

    def copy(self) -> "RunConfig":
        return RunConfig.from_dict(self.to_dict())

    def validate(self) -> "RunConfig":
        t, d = self.train, self.data
        try:
            self.model.validate()
        except ValueError as e:
            raise UserError(str(e)) from None
        checks = [
            (t.batch_size >= 1, f"batch_size must be >= 1, got {t.batch_size}"),
            (t.num_epochs >= 1, f"num_epochs must be >= 1, got {t.num_epochs}"),
            *((getattr(t, n) >= 0, f"{n} must be >= 0, got {getattr(t, n)}") for n in ("seed", "warmup_steps", "prefetch_batches", "augment_shift", "max_nonfinite_steps", "max_bad_windows")),
            (t.learning_rate > 0, f"learning_rate must be > 0, got {t.learning_rate}"),
            (t.num_workers >= 1, f"num_workers must be >= 1, got {t.num_workers}"),
            (t.save_every >= 1, f"save_every must be >= 1, got {t.save_every}"),
            (t.read_batch_size >= 0, f"read_batch_size must be >= 0 (0: one batch per block), got {t.read_batch_size}"),
            (t.checkpoint_upload in ("async", "sync"), f"checkpoint_upload must be async or sync, got {t.checkpoint_upload!r}"),
            (t.precision in ("fp32", "bf16", "auto"), f"precision must be fp32, bf16 or auto, got {t.precision!r}"),
            (t.wandb_mode in ("online", "offline", "disabled", "auto"), f"wandb_mode must be online, offline, disabled or auto, got {t.wandb_mode!r}"),
            (d.sequence_length >= 2, f"sequence_length must be >= 2, got {d.sequence_length}"),
            (d.sequence_length <= self.model.max_frames, f"sequence_length {d.sequence_length} exceeds model max_frames {self.model.max_frames}"),
            (0 <= t.label_fraction <= 1, f"label_fraction must be in 0..1, got {t.label_fraction}"),
            (0 <= t.augment_crop < 1, f"augment_crop must be in [0, 1), got {t.augment_crop}"),
            (0 <= t.augment_gain < 1, f"augment_gain must be in [0, 1), got {t.augment_gain}"),
            (t.label_schedule in LABEL_SCHEDULES, f"label_schedule must be one of {', '.join(LABEL_SCHEDULES)}, got {t.label_schedule!r}"),
            (t.checkpoint_mode in ("min", "max"), f"checkpoint_mode must be min or max, got {t.checkpoint_mode!r}"),
            (t.checkpoint_metric.startswith(("train/", "val/")), f"checkpoint_metric must be an epoch metric (train/... or val/...), "
             f"got {t.checkpoint_metric!r}"),
            (t.checkpoint_metric not in ACTION_CHECK_METRICS or (t.eval_every and t.save_every % t.eval_every == 0),
             f"checkpoint_metric {t.checkpoint_metric} comes from the action check every eval_every ({t.eval_every}) epochs: "
             f"it must divide save_every ({t.save_every}), so every checkpoint has the metric"),
            (t.batch_size >= t.num_workers, f"batch_size {t.batch_size} must be >= num_workers {t.num_workers} (it is split across workers)"),
            (not whitening_underdetermined(self), f"whiten needs more action vectors per step than each has dims: batch_size "
             f"{t.batch_size} x {d.sequence_length - 1} transitions a window = {t.batch_size * (d.sequence_length - 1)} vectors for "
             f"codebook_dim {self.model.codebook_dim}; raise batch_size, or for a large continuous action use whiten false with "
             "kl_weight > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if not d.data_dir:
            raise UserError("--data_dir is required (or data.data_dir in --config); try `lam demo` for synthetic data")
        return self

    def resolve_run_name(self) -> str:
        if not self.train.run_name:
            self.train.run_name = "lam-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return self.train.run_name


def flat_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every leaf field by its flat name -> (section, field). Names are unique across sections."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            assert f.name not in out, f"config field {f.name} is in two sections"
            out[f.name] = (section, f)
    return out


def field_type(f: dataclasses.Field) -> type:
    t = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type))
    if t is None:
        raise TypeError(f"config field {f.name} has unsupported type {f.type!r}")
    return t


def _coerce(name: str, f: dataclasses.Field, value):
    kind = field_type(f)
    aliases = f.metadata.get("aliases", {})
    if isinstance(value, bool) and kind is str:  # a component that was a boolean once: its aliases say what true/false name
        value = str(value).lower()
    if isinstance(value, str) and value in aliases:
        return aliases[value]
    if kind is bool:
        return _as_bool(name, value)
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        words = "".join(f" or {word!r}" for word in f.metadata.get("aliases", {}))
        raise UserError(f"config key '{name}' must be {kind.__name__}{words}, got {value!r}") from None


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise UserError(f"config key '{name}' must be true or false, got {value!r}")


# -----------------------------------------------------------------------------
# Deprecated boolean keys of the model's components: older configs named the components with
# booleans. They are still accepted wherever a config key is (YAML, CLI, search spaces,
# checkpoints) and translated to the choices by `apply_overrides`.

DEPRECATED_KEYS = {
    "fsq": "quantizer: fsq (false: vq)",
    "standardize_z": "whiten",
    "diff_motion_stem": "stem: diff (false: pair)",
    "motion_to_code": "action_head: token+motion",
    "motion_code_only": "action_head: motion",
}
_warned: set[str] = set()


def _apply_deprecated(model: ModelConfig, given: dict[str, bool]) -> None:
    """Translate the old booleans into today's choices, relative to the current config: each
    old key changes only what it used to control (`motion_code_only` implied `motion_to_code`)."""
    if "fsq" in given:
        model.quantizer = "fsq" if given["fsq"] else "vq"
    if "standardize_z" in given:
        model.whiten = given["standardize_z"]
    if "diff_motion_stem" in given:
        model.stem = "diff" if given["diff_motion_stem"] else "pair"
    if "motion_to_code" in given or "motion_code_only" in given:
        to_code = given.get("motion_to_code", model.action_head != "token")
        only = given.get("motion_code_only", model.action_head == "motion")
        model.action_head = "motion" if only else "token+motion" if to_code else "token"


def _warn_deprecated(key: str, source: str) -> None:
    if key not in _warned:  # once per key and process: a sweep applies the same key to every trial
        _warned.add(key)
        print(f"lam: warning: {source}: '{key}' is deprecated; use {DEPRECATED_KEYS[key]}", file=sys.stderr)


# -----------------------------------------------------------------------------
# Overrides and YAML


def whitening_underdetermined(cfg: RunConfig) -> bool:
    """Whether a step's batch has no more action vectors than each has dims, so that the batch
    covariance that whitening inverts is singular (its null directions would be blown up by
    1/sqrt(eps)). FSQ whitens its few grid dims, whatever codebook_dim says."""
    m = cfg.model
    return m.whiten and m.quantizer != "fsq" and cfg.train.batch_size * (cfg.data.sequence_length - 1) <= m.codebook_dim


def apply_overrides(cfg: RunConfig, raw: dict, source: str, warn_deprecated: bool = True) -> RunConfig:
    """Set fields from a nested ({section: {key: v}}) or flat ({key: v}) mapping.
    Deprecated keys are translated first, so a current key given beside one wins."""
    fields = flat_fields()
    flat: dict = {}
    for key, value in (raw or {}).items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                known = sub_key in fields and fields[sub_key][0] == key
                if not known and not (key == "model" and sub_key in DEPRECATED_KEYS):
                    raise UserError(f"{source}: unknown key '{key}.{sub_key}'")
                flat[sub_key] = sub_value
        elif key in fields or key in DEPRECATED_KEYS:
            flat[key] = value
        else:
            raise UserError(f"{source}: unknown key '{key}' (see `lam train --help` for the names)")
    deprecated = {k: _as_bool(k, flat.pop(k)) for k in list(flat) if k in DEPRECATED_KEYS}
    if deprecated:
        if warn_deprecated:
            for key in deprecated:
                _warn_deprecated(key, source)
        _apply_deprecated(cfg.model, deprecated)
    for key, value in flat.items():
        section, f = fields[key]
        setattr(getattr(cfg, section), key, _coerce(key, f, value))
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file does not exist") from None
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: config file is not readable YAML ({e})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: config file must be a mapping of keys to values")
    return raw


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
