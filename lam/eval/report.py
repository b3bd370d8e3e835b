"""Reading the evaluation report: collapse warnings in plain words, and the console printout.

    warnings = collapse_warnings(report)   # [] when the actions look alive
    print_report(report)                   # tables on stdout, "lam eval: warning: ..." on stderr

`collapse_warnings` needs only the report's top-level `transitions`, `action_ids_used` and
`delta_psnr` (and `codebook.num_action_ids` when present), so the training loop can call it
on the small report of its periodic checks.
"""

from __future__ import annotations

import math
import sys

from lam.eval.scores import PROBES

# At most this many action ids in use is a collapse: actions that take 1 or 2 values cannot describe much.
COLLAPSE_MAX_IDS = 2
# Below this delta-t PSNR (dB, horizon 1) the inferred actions predict no better than random ones.
IGNORED_ACTIONS_DB = 0.1


def collapse_warnings(report: dict, max_ids: int = COLLAPSE_MAX_IDS, min_delta_psnr: float = IGNORED_ACTIONS_DB) -> list[str]:
    """Sentences a user understands when the actions have collapsed or the decoder ignores them; [] otherwise."""
    out = []
    used, n = report.get("action_ids_used"), report.get("transitions", 0)
    num_ids = report.get("codebook", {}).get("num_action_ids")
    if used is not None and n:
        if used <= 1:
            out.append(f"all {n} transitions share one action id: the actions carry no information (the codebook collapsed)")
        elif used <= max_ids and (num_ids is None or used < num_ids):
            out.append(f"only {used} action ids are used over {n} transitions"
                       + (f" (of {num_ids})" if num_ids else "") + ": the codebook has nearly collapsed")
    delta = report.get("delta_psnr")
    if delta is not None and math.isfinite(delta) and delta < min_delta_psnr:
        out.append(f"the decoder ignores the actions (delta-t PSNR {delta:.3f} dB at horizon 1: "
                   "predictions with the inferred actions are no better than with random ones)")
    return out


def _pm(scores: dict, key: str, width: int = 7) -> str:
    """'0.812 ± 0.030' for a score and its bootstrap std, or '-' when absent."""
    if key not in scores:
        return f"{'-':>{width + 8}}"
    return f"{scores[key]:>{width}.3f} ± {scores.get(key + '_std', 0.0):.3f}"


def print_ground_truth(gt: dict) -> None:
    boot = gt.get("bootstrap", {})
    print(f"\nground truth: {gt['num_true_actions']} true actions, {gt['transitions']} labelled transitions in {gt['files']} file(s); "
          f"probes scored on {gt['scored_transitions']} transitions, each once ({gt['probe_split']})")
    print(f"± is the bootstrap std over {boot.get('unit', 'file')}s ({boot.get('resamples', 0)} resamples)")
    km = gt.get("kmeans")
    print(f"  {'NMI, action ids':<42}{_pm(gt, 'nmi')}")
    if km:
        words = f"NMI, k-means ids (k={km['k']})"
        print(f"  {words:<42}{_pm(km, 'nmi')}")
    print(f"  {'probe':<42}{'accuracy ± std':>15}{'margin over frames ± std':>28}")
    rows = [(words, gt, name) for name, words in PROBES.items()]
    if km:
        rows.insert(2, ("code-map probe (k-means ids)", km, "code_map"))
    for words, scores, name in rows:
        if f"{name}_accuracy" in scores:
            margin = (f"{scores[name + '_margin']:>+17.3f} ± {scores[name + '_margin_std']:.3f}"
                      if f"{name}_margin" in scores else "")
            print(f"  {words:<42}{_pm(scores, name + '_accuracy')}{margin}")
    if "best_frame_probe" in gt:
        print("  margin: accuracy minus that of the best probe on frame t-1 or frame t alone; a code probe is only as good as its margin")


def print_groups(groups: dict, source: str) -> None:
    print(f"\nper group ({source}):")
    print(f"  {'group':<16}{'files':>6}{'trans.':>8}{'ids':>6}{'NMI':>8}{'code-map':>10}{'linear':>8}"
          f"{'frame t-1':>10}{'frame t':>9}{'chance':>8}")
    def f(g: dict, key: str) -> str:
        return f"{g[key]:.3f}" if key in g else "-"

    for name, g in groups.items():
        print(f"  {name[:16]:<16}{g['files']:>6}{g['transitions']:>8}{g['action_ids_used']:>6}{f(g, 'nmi'):>8}"
              f"{f(g, 'code_map_accuracy'):>10}{f(g, 'linear_probe_accuracy'):>8}{f(g, 'frame_t_minus_1_probe_accuracy'):>10}"
              f"{f(g, 'frame_t_probe_accuracy'):>9}{f(g, 'chance_accuracy'):>8}")


def print_report(report: dict, prog: str = "lam eval") -> None:
    """The report as tables on stdout; its warnings as `PROG: warning: ...` lines on stderr."""
    nf, base = report["next_frame"], report["copy_last_baseline"]
    print(f"\nEvaluation of {report.get('checkpoint', 'model')} on split '{report.get('split', '?')}': "
          f"{report['transitions']} transitions scored ({report.get('tiling', 'windows')}; {report['windows']} windows)")
    print(f"PSNR peak {report['psnr_peak']:.3f} ({report['psnr_peak_definition']})")
    print(f"{'':24}{'MSE':>10}{'MAE':>10}{'PSNR':>10}")
    print(f"{'model (next frame)':24}{nf['mse']:>10.5f}{nf['mae']:>10.5f}{nf['psnr']:>10.2f}")
    print(f"{'copy-last baseline':24}{base['mse']:>10.5f}{base['mae']:>10.5f}{base['psnr']:>10.2f}")
    print(f"\n{'horizon':>8}{'rollout MSE':>14}{'PSNR':>9}{'random-action PSNR':>20}{'delta PSNR':>12}")
    for r in report["rollout"]:
        print(f"{r['horizon']:>8}{r['mse']:>14.5f}{r['psnr']:>9.2f}{r['psnr_random_actions']:>20.2f}{r['delta_psnr']:>12.3f}")
    cb = report["codebook"]
    print(f"\naction ids used: {report['action_ids_used']} of {cb.get('num_action_ids', '?')}, perplexity {cb['action_perplexity']:.2f}")
    if report.get("ground_truth"):
        print_ground_truth(report["ground_truth"])
    if report.get("groups"):
        print_groups(report["groups"], report.get("group_source", "groups"))
    if report.get("report_path"):
        print(f"\nreport: {report['report_path']}")
    for p in report.get("figures", []):
        print(f"figure: {p}")
    sys.stdout.flush()
    for w in report.get("warnings", []):
        print(f"{prog}: warning: {w}", file=sys.stderr)
