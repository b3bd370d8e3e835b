"""Typed configuration: dataclasses with the spec's defaults, loadable from YAML, overridable from the CLI.

A run's config has three sections, each a dataclass:
    data:  where the latents are and how windows are cut       (DataConfig)
    model: the VQ latent action model's hyperparameters        (lam.model.ModelConfig)
    train: optimisation, scale-out, checkpoints, logging       (TrainConfig)

Every leaf field is also a CLI flag of the same flat name (`--embed_dim`,
`--data_dir`, `--num_workers`, ...), so the spec's commands work as written.
A YAML file may use the sections or flat keys:

    data: {data_dir: demo_data, sequence_length: 8}        # nested
    model: {embed_dim: 256}
    train: {batch_size: 16, learning_rate: 3.0e-4}

    data_dir: demo_data                                    # or flat
    embed_dim: 256

Precedence: dataclass defaults < --config YAML < CLI flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lam.errors import UserError
from lam.model.config import ModelConfig


@dataclass
class DataConfig:
    data_dir: str = ""
    manifest_path: str = ""  # default: DATA_DIR/manifest.json
    sequence_length: int = 8  # latent frames per window (8 = 4 chunks = 4 s of video)
    stride: int = 0  # frames between window starts in train; 0 = sequence_length (non-overlapping)
    # (the H5 dataset key comes from the manifest: `lam manifest --dataset_key`)

    @property
    def manifest(self) -> str:
        return self.manifest_path or str(Path(self.data_dir) / "manifest.json")

    @property
    def train_stride(self) -> int:
        return self.stride or self.sequence_length


@dataclass
class TrainConfig:
    # optimisation (spec defaults)
    batch_size: int = 32  # per step across all workers
    num_epochs: int = 100
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500  # linear warm-up, then cosine decay to min_lr_ratio * learning_rate
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm (the pre-clip norm is logged as train/grad_norm)
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on GPUs that support it, else fp32; on CPUs bf16 autocast measured slower, see bench/)
    compile: bool = False  # torch.compile the model (on CPU the first steps compile C++ kernels: minutes)
    seed: int = 0
    test_mode: bool = False  # spec's overfit sanity check: train on one batch, PASS if MSE < 0.01 and MAE < 0.05
    # scale-out
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # also each worker's torch thread count (Ray sets OMP_NUM_THREADS to it): on a CPU-only machine use cores / num_workers
    # input pipeline (Ray Data -> worker)
    read_batch_size: int = 0  # windows per Ray Data block; 0: one per-worker batch, so a batch is one block (no copy)
    prefetch_batches: int = 2  # batches each worker's iterator prepares ahead of the training step
    max_failures: int = 0  # restarts from the last checkpoint when a worker dies
    # checkpoints and outputs
    run_name: str = ""  # default: a timestamp; re-use a name to resume that run
    storage_path: str = "./runs"  # local folder or a URI (s3://..., gs://...)
    save_every: int = 5  # epochs between checkpoints (and always at the end)
    keep_best: int = 3  # checkpoints kept by lowest val/loss; the latest is always kept too
    # logging
    log_every: int = 10  # steps between console/metric lines inside an epoch
    wandb_project: str = "vvae-lam"
    wandb_mode: str = "auto"  # online | offline | disabled | auto (online when an API key is configured)
    wandb_group: str = ""
    eval_every: int = 1  # epochs between controllability/NMI evaluations on val (0 disables)
    # testing hook: raise once in rank 0 at this global step to exercise failure recovery (0 = never)
    inject_fault_at_step: int = 0


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        cfg = cls()
        apply_overrides(cfg, raw, source="config")
        return cfg

    def validate(self) -> "RunConfig":
        t, d = self.train, self.data
        try:
            self.model.validate()
        except ValueError as e:
            raise UserError(str(e)) from None
        checks = [
            (t.batch_size >= 1, f"batch_size must be >= 1, got {t.batch_size}"),
            (t.num_epochs >= 1, f"num_epochs must be >= 1, got {t.num_epochs}"),
            (t.learning_rate > 0, f"learning_rate must be > 0, got {t.learning_rate}"),
            (t.warmup_steps >= 0, f"warmup_steps must be >= 0, got {t.warmup_steps}"),
            (t.num_workers >= 1, f"num_workers must be >= 1, got {t.num_workers}"),
            (t.save_every >= 1, f"save_every must be >= 1, got {t.save_every}"),
            (t.read_batch_size >= 0, f"read_batch_size must be >= 0 (0: one batch per block), got {t.read_batch_size}"),
            (t.prefetch_batches >= 0, f"prefetch_batches must be >= 0, got {t.prefetch_batches}"),
            (t.precision in ("fp32", "bf16", "auto"), f"precision must be fp32, bf16 or auto, got {t.precision!r}"),
            (t.wandb_mode in ("online", "offline", "disabled", "auto"), f"wandb_mode must be online, offline, disabled or auto, got {t.wandb_mode!r}"),
            (d.sequence_length >= 2, f"sequence_length must be >= 2, got {d.sequence_length}"),
            (d.sequence_length <= self.model.max_frames, f"sequence_length {d.sequence_length} exceeds model max_frames {self.model.max_frames}"),
            (t.batch_size >= t.num_workers, f"batch_size {t.batch_size} must be >= num_workers {t.num_workers} (it is split across workers)"),
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


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def flat_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every leaf field by its flat name -> (section, field). Names are unique across sections."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            assert f.name not in out, f"config field {f.name} is in two sections"
            out[f.name] = (section, f)
    return out


def _coerce(name: str, f: dataclasses.Field, value):
    kind = _field_type(f)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"config key '{name}' must be true or false, got {value!r}")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"config key '{name}' must be {kind.__name__}, got {value!r}") from None


def _field_type(f: dataclasses.Field) -> type:
    t = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type))
    if t is None:
        raise TypeError(f"config field {f.name} has unsupported type {f.type!r}")
    return t


def apply_overrides(cfg: RunConfig, raw: dict, source: str) -> RunConfig:
    """Set fields from a nested ({section: {key: v}}) or flat ({key: v}) mapping."""
    fields = flat_fields()
    for key, value in (raw or {}).items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if sub_key not in fields or fields[sub_key][0] != key:
                    raise UserError(f"{source}: unknown key '{key}.{sub_key}'")
                _set(cfg, sub_key, sub_value, fields)
        elif key in fields:
            _set(cfg, key, value, fields)
        else:
            raise UserError(f"{source}: unknown key '{key}' (see `lam train --help` for the names)")
    return cfg


def _set(cfg: RunConfig, key: str, value, fields) -> None:
    section, f = fields[key]
    setattr(getattr(cfg, section), key, _coerce(key, f, value))


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


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(dump_yaml(cfg))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# -----------------------------------------------------------------------------
# CLI


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (`--name` and `--name-with-dashes`), default: not given."""
    from lam.cli import add_flag

    parser.add_argument("--config", help="YAML config file; CLI flags override it")
    groups = {s: parser.add_argument_group(f"{s} options") for s in SECTIONS}
    for name, (section, f) in flat_fields().items():
        kind = _field_type(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = f"(default: {default!r})"
        if kind is bool:
            add_flag(groups[section], name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=helptext)
        else:
            add_flag(groups[section], name, type=kind, default=argparse.SUPPRESS, metavar=kind.__name__.upper(), help=helptext)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig()
    if getattr(args, "config", None):
        apply_overrides(cfg, load_yaml(args.config), source=args.config)
    given = {name: getattr(args, name) for name in flat_fields() if hasattr(args, name)}
    apply_overrides(cfg, given, source="command line")
    return cfg
