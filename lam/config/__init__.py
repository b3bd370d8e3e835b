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
`choices`, so a config is checked without importing torch. A component with settings of
its own (the quantizer, the forward target, the rollout loss) declares them in `lam.config.components`, next to its names; its
settings are flat keys too, and one the chosen component does not read is an error.

Files: model.py (ModelConfig), train.py (TrainConfig, SweepConfig), components.py,
options.py (the field helper); here the run config, the flat keys and the overrides.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lam.config.components import (ACTION_HEAD, COMPONENT_KINDS, FORWARD_TARGET, FRAME_CORRELATION,  # noqa: F401  (re-exported)
                                   MOTION_MOMENTS, PREDICTION, QUANTIZER, ROLLOUT, STEM, Choice, ComponentKind, FSQSettings,
                                   GaussianSettings, MultistepSettings, NoRolloutSettings, PixelsLatentSettings, PixelsSettings,
                                   VQSettings, setting_owners)
from lam.config.model import ACTION_HEADS, CORRELATIONS, FORWARD_TARGETS, MOMENTS, PREDICTIONS, QUANTIZERS, STEMS, ModelConfig  # noqa: F401  (re-exported)
from lam.config.options import option
from lam.config.train import ACTION_CHECK_METRICS, COMPILE_MODES, LABEL_SCHEDULES, SweepConfig, TrainConfig  # noqa: F401  (SweepConfig: re-exported)
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


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Nested by section, with flat keys: a component's settings follow its choice in the
        model section (`quantizer: vq, codebook_dim: 128, ...`), the keys a user types."""
        out = dataclasses.asdict(self)
        nested, out["model"] = out["model"], {}
        settings_fields = {kind.key: kind.settings_field for kind in COMPONENT_KINDS}
        for key, value in nested.items():
            if key not in settings_fields.values():
                out["model"][key] = value
            if key in settings_fields:
                out["model"].update(nested[settings_fields[key]])
        return out

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config", unused: str = "error") -> "RunConfig":
        return apply_overrides(cls(), raw, source=source, unused=unused)

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
            (t.save_every_steps >= 0, f"save_every_steps must be >= 0 (0: off), got {t.save_every_steps}"),
            (t.read_batch_size >= 0, f"read_batch_size must be >= 0 (0: one batch per block), got {t.read_batch_size}"),
            (t.checkpoint_upload in ("async", "sync"), f"checkpoint_upload must be async or sync, got {t.checkpoint_upload!r}"),
            (t.precision in ("fp32", "bf16", "auto"), f"precision must be fp32, bf16 or auto, got {t.precision!r}"),
            (t.wandb_mode in ("online", "offline", "disabled", "auto"), f"wandb_mode must be online, offline, disabled or auto, got {t.wandb_mode!r}"),
            (d.sequence_length >= 2, f"sequence_length must be >= 2, got {d.sequence_length}"),
            (d.sequence_length <= self.model.max_frames, f"sequence_length {d.sequence_length} exceeds model max_frames {self.model.max_frames}"),
            (0 <= t.label_fraction <= 1, f"label_fraction must be in 0..1, got {t.label_fraction}"),
            (0 <= t.augment_crop < 1, f"augment_crop must be in [0, 1), got {t.augment_crop}"),
            (0 <= t.augment_gain < 1, f"augment_gain must be in [0, 1), got {t.augment_gain}"),
            (t.compile_mode in COMPILE_MODES, f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {t.compile_mode!r}"),
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
             f"codebook_dim {getattr(self.model.quantizer_settings, 'codebook_dim', 0)}; raise batch_size, or for a large continuous action use whiten false with "
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
    """Every leaf field by its flat name -> (section, field), the components' settings included
    (section "model"; `lam.config.components`). Names are unique across sections."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            if "component" in f.metadata:  # a component's settings: their own keys follow
                continue
            assert f.name not in out, f"config field {f.name} is in two sections"
            out[f.name] = (section, f)
    for key, kind in setting_owners().items():
        assert key not in out, f"setting {key} of the {kind.key} is also a config field"
        out[key] = ("model", kind.setting_fields()[key])
    return out


def choose(model: ModelConfig, kind: ComponentKind, name: str) -> None:
    """Choose a component; a new choice starts from its own settings' defaults (the settings
    set for the component it replaces do not apply to it)."""
    if name not in kind.choices:
        raise UserError(f"config key '{kind.key}' must be one of {', '.join(kind.names)}, got {name!r}")
    if name != getattr(model, kind.key) or type(getattr(model, kind.settings_field)) is not kind.choices[name]:
        setattr(model, kind.settings_field, kind.choices[name]())
    setattr(model, kind.key, name)


def _set_setting(model: ModelConfig, kind: ComponentKind, key: str, value, source: str, unused: str) -> None:
    """Set one setting of the chosen component. A key the chosen component does not read is an
    error naming both (unused="error"), or left out (unused="drop": a search space's draw, an
    older checkpoint's config). A value equal to the key's default is left out too: configs
    written in full by older versions list every component's settings at their defaults."""
    chosen, settings = getattr(model, kind.key), getattr(model, kind.settings_field)
    fields = {f.name: f for f in dataclasses.fields(settings)}
    if key in fields:
        setattr(settings, key, _coerce(key, fields[key], value))
        return
    declared = kind.setting_fields()[key]
    if unused == "drop" or _coerce(key, declared, value) == declared.default:
        return
    users = kind.users(key)
    raise UserError(f"{source}: '{key}' is a setting of the {' and '.join(users)} {kind.key}{'s' * (len(users) > 1)}; "
                    f"{kind.key} {chosen} does not use it "
                    f"(choose one that does with --{kind.key}, or leave {key} out)")


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
    "use_rollout": "rollout: multistep (false: none)",
}
_warned: set[str] = set()


def _apply_deprecated(model: ModelConfig, given: dict[str, bool]) -> None:
    """Translate the old booleans into today's choices, relative to the current config: each
    old key changes only what it used to control (`motion_code_only` implied `motion_to_code`)."""
    if "fsq" in given:
        choose(model, QUANTIZER, "fsq" if given["fsq"] else "vq")
    if "use_rollout" in given:
        choose(model, ROLLOUT, "multistep" if given["use_rollout"] else "none")
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
    1/sqrt(eps)). FSQ has no codebook_dim: it whitens its few grid dims."""
    m = cfg.model
    dims = getattr(m.quantizer_settings, "codebook_dim", 0)
    return m.whiten and cfg.train.batch_size * (cfg.data.sequence_length - 1) <= dims


def apply_overrides(cfg: RunConfig, raw: dict, source: str, warn_deprecated: bool = True, unused: str = "error") -> RunConfig:
    """Set fields from a nested ({section: {key: v}}) or flat ({key: v}) mapping.
    Deprecated keys are translated first, so a current key given beside one wins; a
    component's choice is set before its settings, so a mapping that names a component
    sets that component's settings. `unused`: what a setting that the chosen component does
    not read does, "error" (a user's config) or "drop" (see `_set_setting`)."""
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
    for kind in COMPONENT_KINDS:
        if kind.key in flat:
            choose(cfg.model, kind, _coerce(kind.key, fields[kind.key][1], flat.pop(kind.key)))
    owners = setting_owners()
    for key, value in flat.items():
        section, f = fields[key]
        if key in owners:
            _set_setting(cfg.model, owners[key], key, value, source, unused)
        else:
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
