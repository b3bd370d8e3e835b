"""Levers side by side: each report's gap closed per dataset, against a base report on the same seeds.

    python -m bench.quality.levers bench/results/quality-v2-real-4epochs.json screen-*.json
    python -m bench.quality.levers BASE.json SCREEN.json --out levers.md

A screening (`python -m bench.quality --recipe real --set KEY=VALUE --seeds 1 ...`) trains the
base recipe with one change; this reads every report given after the base and prints one
Markdown row per report: its change (the `--set` keys over the recipe), and for every dataset
the gap closed beyond one frame over the seeds it ran, with the difference from the base's
runs of the same seeds in brackets (the base's other seeds are left out, so a one-seed screen
is read against the base's own seed 0, never against a mean it was not part of). The last
columns count the datasets where the change moved the gap by more than `--margin` either
way. Every number comes from the reports; nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.quality.yardstick import summarise

MARGIN = 0.05  # a move of the gap smaller than this is read as no move (two fits of a ceiling differ by up to 0.02)


def change_name(report: dict) -> str:
    overrides = report.get("overrides") or {}
    change = " ".join(f"{k}={v}" for k, v in overrides.items()) or "(none)"
    return f"`{report['recipe']}` + {change}" if overrides else f"`{report['recipe']}`"


def gap(per_seed: list[dict]) -> float | None:
    return summarise(per_seed)["gap_closed"]["mean"] if per_seed else None


def row(base: dict, report: dict, datasets: list[str], margin: float) -> tuple[list[str], int, int]:
    """The row's cells (one per dataset) and how many datasets it moved up and down by over `margin`."""
    cells, up, down = [], 0, 0
    for name in datasets:
        runs = report["datasets"].get(name, {}).get("per_seed", [])
        if not runs:
            cells.append("-")
            continue
        seeds = {r["seed"] for r in runs}
        ours = gap(runs)
        theirs = gap([r for r in base["datasets"].get(name, {}).get("per_seed", []) if r["seed"] in seeds])
        seed_note = "" if seeds == {0} else f" [{len(seeds)} seeds]"
        if ours is None or theirs is None:
            cells.append(f"{ours:.2f}{seed_note}" if ours is not None else "-")
            continue
        delta = ours - theirs
        up, down = up + (delta > margin), down + (delta < -margin)
        cells.append(f"{ours:.2f} ({delta:+.2f}){seed_note}")
    return cells, up, down


def table(base: dict, reports: list[dict], margin: float = MARGIN) -> str:
    datasets = list(base["datasets"])
    datasets += [n for r in reports for n in r["datasets"] if n not in datasets]
    lines = ["| change | " + " | ".join(datasets) + f" | up > {margin:g} | down > {margin:g} |",
             "|" + "---|" * (len(datasets) + 3)]
    base_cells = []
    for name in datasets:
        runs = [r for r in base["datasets"].get(name, {}).get("per_seed", []) if r["seed"] == 0]
        value = gap(runs)
        base_cells.append("-" if value is None else f"{value:.2f}")
    lines.append(f"| {change_name(base)} (seed 0) | " + " | ".join(base_cells) + " | | |")
    for report in reports:
        cells, up, down = row(base, report, datasets, margin)
        lines.append(f"| {change_name(report)} | " + " | ".join(cells) + f" | {up} | {down} |")
    lines += ["", "Gap closed beyond one frame on every test transition of the yardstick; in brackets the change from "
                  "the base's runs of the same seeds; a cell with one seed is seed 0 unless marked."]
    return "\n".join(lines)


def comparable(base: dict, report: dict) -> str | None:
    """Why `report` cannot be read against `base` (None if it can): the same recipe, and the same
    epochs on every dataset both have."""
    if report.get("recipe") != base.get("recipe"):
        return f"recipe {report.get('recipe')}, the base's is {base.get('recipe')}: compare a change with its own recipe"
    for name, d in report.get("datasets", {}).items():
        theirs = base.get("datasets", {}).get(name)
        if theirs and theirs.get("epochs") != d.get("epochs"):
            return f"{name} trained {d.get('epochs')} epochs, the base {theirs.get('epochs')}: compare runs of the same length"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.levers", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the base recipe's report (python -m bench.quality --recipe NAME ...)")
    parser.add_argument("reports", nargs="+", help="reports of the same recipe with --set changes")
    parser.add_argument("--margin", type=float, default=MARGIN, help=f"a move of the gap counted as up or down (default {MARGIN})")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    loaded = []
    for path in [args.base, *args.reports]:
        try:
            loaded.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            print(f"python -m bench.quality.levers: error: {path}: {e}", file=sys.stderr)
            return 2
    base, reports = loaded[0], loaded[1:]
    for path, report in zip(args.reports, reports):
        problem = comparable(base, report)
        if problem:
            print(f"python -m bench.quality.levers: error: {path}: {problem}", file=sys.stderr)
            return 2
    text = table(base, reports, args.margin)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
