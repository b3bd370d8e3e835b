"""How well does a score that training sees rank runs the way the test probe does?

    python -m bench.quality.score_ranking bench/results/quality-v2-real-4epochs.json screen-*.json

Sweeps (`lam tune`) and checkpoint choice (`checkpoint_metric`) need a score that training
can compute: val/mse_loss by default, which can rise while the actions get better. Every run
that `python -m bench.quality` trains keeps its last epoch's val metrics (`val_scores`) next
to its test probe accuracy (the code -> action map, cross-fitted over the test files). For
each dataset this reads every run of the given reports (all levers, all seeds), and for each
candidate score the Spearman rank correlation between it and the probe over those runs
(scores that are better low are negated first, so a good score correlates positively). The
mean over datasets ranks the candidates; a dataset with fewer than `MIN_RUNS` runs is left out.
Unsupervised candidates need no labels; val/nmi and val/code_map_accuracy need true actions
on the val files, which a user may have for a few files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

# Candidates, and whether each is better low.
CANDIDATES = {
    "val/loss": True, "val/mse_loss": True, "val/delta_psnr": False, "val/action_perplexity": False,
    "val/action_ids_used": False, "val/codebook_usage": False, "val/nmi": False, "val/code_map_accuracy": False,
}
MIN_RUNS = 4


def runs_by_dataset(reports: list[dict]) -> dict[str, list[dict]]:
    """{dataset: [the `ours` entry of every run]}, over every report; a run without val scores
    (made before they were kept) is left out."""
    out: dict[str, list[dict]] = {}
    for report in reports:
        for name, d in report.get("datasets", {}).items():
            out.setdefault(name, []).extend(r["ours"] for r in d["per_seed"] if r["ours"].get("val_scores"))
    return out


def correlations(runs: list[dict]) -> dict[str, float | None]:
    """Spearman correlation of each candidate (sign-flipped where better low) with the probe over
    `runs`; None where fewer than MIN_RUNS runs have the candidate or it does not vary."""
    out = {}
    for name, lower_is_better in CANDIDATES.items():
        pairs = [(r["val_scores"][name], r["probe_accuracy"]) for r in runs if name in r["val_scores"]]
        if len(pairs) < MIN_RUNS or len({p[0] for p in pairs}) < 2:
            out[name] = None
            continue
        score, probe = np.array(pairs).T
        out[name] = float(spearmanr(-score if lower_is_better else score, probe).statistic)
    return out


def table(per_dataset: dict[str, dict]) -> str:
    names = list(per_dataset)
    lines = ["| score | " + " | ".join(names) + " | mean |", "|" + "---|" * (len(names) + 2)]
    rows = []
    for candidate in CANDIDATES:
        values = [per_dataset[n]["correlations"][candidate] for n in names]
        known = [v for v in values if v is not None]
        mean = float(np.mean(known)) if known else None
        rows.append((mean if mean is not None else -2, candidate, values, mean))
    for _, candidate, values, mean in sorted(rows, reverse=True):
        cells = ["-" if v is None else f"{v:+.2f}" for v in values]
        lines.append(f"| {candidate} | " + " | ".join(cells) + f" | {'-' if mean is None else f'{mean:+.2f}'} |")
    runs = ", ".join(f"{n} {per_dataset[n]['runs']}" for n in names)
    lines += ["", f"Spearman rank correlation with the test probe over runs (runs per dataset: {runs}); higher ranks runs "
                  "more like the probe does."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.score_ranking", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="reports of `python -m bench.quality` (any recipes, levers, seeds)")
    parser.add_argument("--out", help="also write the correlations as JSON here")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            print(f"python -m bench.quality.score_ranking: error: {path}: {e}", file=sys.stderr)
            return 2
    per_dataset = {name: {"runs": len(runs), "correlations": correlations(runs)}
                   for name, runs in runs_by_dataset(reports).items() if len(runs) >= MIN_RUNS}
    if not per_dataset:
        print(f"python -m bench.quality.score_ranking: error: no dataset has {MIN_RUNS} or more runs with val scores in these reports",
              file=sys.stderr)
        return 2
    print(table(per_dataset))
    if args.out:
        Path(args.out).write_text(json.dumps(per_dataset, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
