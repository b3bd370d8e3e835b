"""A config field: its default, its one-line description (the CLI's help) and, for a component, its valid names."""

from __future__ import annotations

from dataclasses import field


def option(default, help: str, *, group: str = "", choices: tuple[str, ...] = (), aliases: dict | None = None):
    """A config field with its one-line description (the CLI's help), for a component its valid
    names, and words that stand for a value (`aliases`, e.g. {"fail": 0})."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "aliases": aliases or {}})
