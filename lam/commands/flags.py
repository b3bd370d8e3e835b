"""Argparse glue: every config field becomes a flag whose help is the field's own description.

    parser = argparse.ArgumentParser()
    add_config_flags(parser)              # --config, --recipe, one flag per field, grouped
    cfg = config_from_args(parser.parse_args())

Flags take the field's flat name (`--embed_dim`) and its dashed spelling
(`--embed-dim`); a run flag not given leaves the value to the recipe or YAML below it.
"""

from __future__ import annotations

import argparse
import dataclasses

from lam.config import DEPRECATED_KEYS, RunConfig, SweepConfig, apply_overrides, field_type, flat_fields, load_yaml, setting_owners
from lam.recipes import RECIPES, recipe_config, recipe_sweep

HELP_GROUPS = {"data": "data options", "model": "model options"}  # TrainConfig fields name their own group


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kwargs) -> None:
    """Add `--some_flag` with its dashed spelling `--some-flag` as an alias."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*spellings, dest=name, **kwargs)


def add_field_flag(group: argparse._ArgumentGroup, f: dataclasses.Field, default, description: str = "",
                   default_note: str = "") -> None:
    """The flag of one config field: its type, its choices, its description and default (and
    `default_note`, e.g. the recipes that set another)."""
    helptext = f"{description or f.metadata['help']} (default: {f.default!r}{default_note})".replace("%", "%%")
    kind = field_type(f)
    if kind is bool:
        add_flag(group, f.name, action=argparse.BooleanOptionalAction, default=default, help=helptext)
    elif f.metadata["choices"]:
        choices = [*f.metadata["choices"], *f.metadata.get("aliases", {})]  # older words for a choice still parse
        add_flag(group, f.name, choices=choices, default=default, help=helptext)
    elif f.metadata.get("aliases"):  # a number or a word for one: the config turns the word into its value
        metavar = "|".join([kind.__name__.upper(), *f.metadata["aliases"]])
        add_flag(group, f.name, type=str, default=default, metavar=metavar, help=helptext)
    else:
        add_flag(group, f.name, type=kind, default=default, metavar=kind.__name__.upper(), help=helptext)


def recipes_help() -> str:
    return "recipes (--recipe NAME; defaults < recipe < --config < flags):\n" + "\n".join(
        f"  {name:<6} {recipe.summary}" for name, recipe in RECIPES.items()
    )


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--config, --recipe and one flag per run config field (default: not given), grouped by section."""
    parser.add_argument("--config", metavar="YAML", help="YAML config file; flags override it")
    parser.add_argument("--recipe", default="spec", choices=list(RECIPES), help="starting config (default: spec; listed below)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    owners = setting_owners()
    for name, (section, f) in flat_fields().items():
        title = HELP_GROUPS.get(section) or f"{f.metadata['group']} options"
        if name in owners:  # a component's setting: its help names the choices that read it
            title = f"{owners[name].key} settings (each read only by the {owners[name].key}s named)"
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        add_field_flag(groups[title], f, argparse.SUPPRESS, owners[name].describe(name) if name in owners else "")
    old = parser.add_argument_group("deprecated model flags (still accepted)")
    for name, replacement in DEPRECATED_KEYS.items():
        add_flag(old, name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=f"use {replacement}")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config: the recipe, then the --config YAML, then the flags given."""
    cfg = recipe_config(getattr(args, "recipe", None) or "spec")
    if getattr(args, "config", None):
        apply_overrides(cfg, load_yaml(args.config), source=args.config)
    names = [*flat_fields(), *DEPRECATED_KEYS]
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    apply_overrides(cfg, given, source="command line")
    return cfg


# Sweep fields a recipe may set (`Recipe.sweep`): their flags default to "not given".
RECIPE_SWEEP_FIELDS = ("metric", "mode")


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sweep options")
    by_recipe = {name: recipe.sweep for name, recipe in RECIPES.items() if recipe.sweep}
    for f in dataclasses.fields(SweepConfig):
        if f.name in RECIPE_SWEEP_FIELDS:
            own = "".join(f"; {v[f.name]!r} with --recipe {name}" for name, v in by_recipe.items() if f.name in v)
            add_field_flag(group, f, None, default_note=own)
        else:
            add_field_flag(group, f, f.default)


def sweep_from_args(args: argparse.Namespace) -> SweepConfig:
    """The sweep settings: SweepConfig's defaults, then the recipe's (`Recipe.sweep`), then the flags given."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SweepConfig)}
    from_recipe = recipe_sweep(getattr(args, "recipe", None) or "spec")
    for name in RECIPE_SWEEP_FIELDS:
        if values[name] is None:
            values[name] = from_recipe.get(name, SweepConfig.__dataclass_fields__[name].default)
    return SweepConfig(**values)
