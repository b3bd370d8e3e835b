"""Search spaces for `lam tune`, written in YAML.

Each key is a config field (its flat name, as on the command line); each value is
one of:

    embed_dim: {grid: [128, 256]}              # every value, in every combination (grid search)
    num_embeddings: {choice: [8, 12, 16]}      # one value drawn per sample
    learning_rate: {loguniform: [1.0e-4, 3.0e-3]}
    commitment_weight: {uniform: [0.1, 0.5]}
    encoder_depth: {randint: [2, 6]}           # integers, upper bound exclusive
    decoder_depth: 4                           # a fixed value

Grid keys multiply the number of trials; `--num_samples` repeats the grid and
draws the random keys anew each time (Ray Tune's rules).

A component's settings may be drawn beside a draw of the component: a trial uses the
settings its drawn component reads and leaves the others out (`commitment_weight` is
vq's, `noise_std` the gaussian's). Each must be read by a choice the sweep can draw.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune

from lam.config import COMPONENT_KINDS, DEPRECATED_KEYS, RunConfig, apply_overrides, choose, flat_fields, load_yaml
from lam.errors import UserError

DEFAULT_SPACE_PATH = Path(__file__).with_name("default_space.yaml")

FORMS = {
    "grid": lambda v: tune.grid_search(list(v)),
    "choice": lambda v: tune.choice(list(v)),
    "uniform": lambda v: tune.uniform(*v),
    "loguniform": lambda v: tune.loguniform(*v),
    "randint": lambda v: tune.randint(*v),
}
RANGE_FORMS = ("uniform", "loguniform", "randint")


def load_search_space(path: str | Path | None) -> dict:
    """The raw YAML mapping, checked: known keys, known forms, well-formed values."""
    path = Path(path) if path else DEFAULT_SPACE_PATH
    raw = load_yaml(path)
    if not raw:
        raise UserError(f"{path}: search space is empty")
    fields = flat_fields()
    for key, spec in raw.items():
        if key not in fields and key not in DEPRECATED_KEYS:
            raise UserError(f"{path}: unknown config key '{key}' (use the flat names of `lam train --help`)")
        if not isinstance(spec, dict):
            continue  # a fixed value
        if len(spec) != 1 or next(iter(spec)) not in FORMS:
            raise UserError(f"{path}: '{key}' must be a value or one of {{{', '.join(FORMS)}: ...}}, got {spec!r}")
        form, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: '{key}: {{{form}: ...}}' needs a non-empty list")
        if form in RANGE_FORMS:
            if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not values[0] < values[1]:
                raise UserError(f"{path}: '{key}: {{{form}: [low, high]}}' needs two numbers with low < high, got {values!r}")
            if form == "loguniform" and values[0] <= 0:
                raise UserError(f"{path}: '{key}: {{loguniform: ...}}' needs low > 0, got {values[0]!r}")
    return raw


def to_param_space(raw: dict) -> dict:
    """YAML spec -> Ray Tune's param_space (flat config names -> domains or values)."""
    out = {}
    for key, spec in raw.items():
        if isinstance(spec, dict):
            form, values = next(iter(spec.items()))
            out[key] = FORMS[form](values)
        else:
            out[key] = spec
    return out


def check_against(base: RunConfig, raw: dict, source: str) -> None:
    """Fail at start-up, not in trial 7: every listed value (and both ends of every range)
    must make a valid config on its own, e.g. embed_dim divisible by num_heads; a component's
    setting is checked on a choice that reads it."""
    for key, spec in raw.items():
        if isinstance(spec, dict):
            form, values = next(iter(spec.items()))
        else:
            values = [spec]
        for value in values:
            cfg = base.copy()
            reader = component_reading(key, base, raw, source)
            if reader:
                choose(cfg.model, *reader)
            try:
                apply_overrides(cfg, {key: value}, source)
                cfg.validate()
            except UserError as e:
                raise UserError(f"{source}: {key}={value!r} gives an invalid config: {e}") from None


def component_reading(key: str, base: RunConfig, raw: dict, source: str):
    """(kind, name): a choice the sweep can draw that reads setting `key`; None for a key that
    is not a component's setting."""
    for kind in COMPONENT_KINDS:
        if key not in kind.setting_fields():
            continue
        spec = raw.get(kind.key, getattr(base.model, kind.key))
        drawn = next(iter(spec.values())) if isinstance(spec, dict) else [spec]
        readers = [name for name in drawn if name in kind.users(key)]
        if not readers:
            raise UserError(f"{source}: '{key}' is a setting of {kind.key} {' and '.join(kind.users(key))} only; "
                            f"the sweep draws {kind.key} from {list(drawn)}, none of which reads it")
        return kind, readers[0]
    return None


def describe(raw: dict) -> str:
    """One line per key, for the sweep's start-up summary."""
    lines = []
    for key, spec in raw.items():
        if isinstance(spec, dict):
            form, values = next(iter(spec.items()))
            lines.append(f"  {key:<18} {form} {values}")
        else:
            lines.append(f"  {key:<18} = {spec!r}")
    return "\n".join(lines)


def count_grid(raw: dict) -> int:
    """Trials per sample: the product of the grid keys' lengths."""
    n = 1
    for spec in raw.values():
        if isinstance(spec, dict) and "grid" in spec:
            n *= len(spec["grid"])
    return n
