"""Do the action ids mean anything, and more than the frames alone? The `ground_truth` part of the report.

For transitions whose true action is known (the files' `actions`):

- NMI between action ids and true actions, over every transition;
- probes cross-fitted over folds of files (`lam.eval.metrics.folds_by_group`, 5 folds:
  each fold is scored by a probe fitted on the other four, so every transition is scored
  exactly once and no transition of a scored video was fitted on; one file: folds of
  transitions): the code-map probe on the model's ids, a linear probe on the
  pre-quantisation vectors, and the majority-class chance level;
- the leakage control: linear probes on frame t-1 alone and on frame t alone (pooled to a
  small grid, `lam.eval.probes.pool_frames`), fitted and scored on the same split. When a
  single frame already tells the action (a game that draws the pressed button, an agent
  that only moves one way near a wall), a code probe can score well without the codes
  describing the change; only its margin over the best frame-only probe counts;
- k-means ids of the pre-quantisation vectors, scored like the model's ids, so a continuous
  bottleneck can be scored the same way (the clusters are fitted on all scored vectors: they
  see no label, and their code -> action map is cross-fitted like the model's);
- the sampling error of every score: its std over seeded bootstrap resamples of whole files
  (of transitions when there is one file). The probes stay fitted; only the scored
  transitions are resampled, so the std is the error of the score, not of the fit.

Every probe, chance included, uses the same folds (a function of the files and `seed`), so
two evaluations of the same split (a trained model and its untrained floor, say) are scored
on exactly the same transitions with the same fit parts.

`label_scores` returns plain floats, ints and lists, ready for JSON; `summarize` in
`lam.eval.evaluate` calls it on all transitions and on each group of files.
"""

from __future__ import annotations

import numpy as np

from lam.eval.metrics import (
    as_labels,
    bootstrap_std,
    confusion_matrix,
    cross_fit,
    folds_by_group,
    majority_label,
    normalized_mutual_information,
)
from lam.eval.probes import (
    KMEANS_K_RULE,
    kmeans_ids,
    kmeans_k,
    linear_probe_predictions,
    mapping_probe_predictions,
)

# Probe names as they appear in report keys (`<name>_accuracy`) and in words.
PROBES = {
    "code_map": "code-map probe (action ids)",
    "linear_probe": "linear probe (pre-quantisation vectors)",
    "frame_t_minus_1_probe": "frame t-1 alone",
    "frame_t_probe": "frame t alone",
    "chance": "chance (majority action)",
}
FRAME_PROBES = ("frame_t_minus_1_probe", "frame_t_probe")


def label_scores(ids, labels, files, z_pre=None, frames_prev=None, frames_next=None, num_ids: int | None = None,
                 num_labels: int | None = None, num_rows: int | None = None, seed: int = 0, bootstrap: int = 200) -> dict:
    """Scores of action ids (and optional features) against true actions; see the module docstring.

    ids, labels, files: one per transition (`files` names or numbers the file, the unit of
    the split and of the bootstrap). z_pre: pre-quantisation vectors `[N, ...]`;
    frames_prev / frames_next: pooled frames t-1 and t `[N, F]`; each optional.
    num_ids: the model's number of action ids (caps k-means' k); num_labels / num_rows: the
    confusion matrix's columns / rows (default: max + 1). `bootstrap` resamples (0: no std).
    """
    ids, labels = as_labels(ids, "ids"), as_labels(labels, "labels")
    files = np.asarray(files).reshape(-1)
    n = labels.size
    if ids.size != n or files.size != n or n == 0:
        raise ValueError(f"label_scores needs one id, label and file per transition, got {ids.size}, {n}, {files.size}")
    num_labels = num_labels or int(labels.max()) + 1
    num_rows = num_rows or int(ids.max()) + 1
    num_ids = num_ids or num_rows
    n_files = int(np.unique(files).size)
    # transitions of a file are correlated: resample files; with one file there is nothing else to resample
    units, unit_name = (files, "file") if n_files > 1 else (np.arange(n), "transition")

    def std(statistic, on_units):
        return bootstrap_std(statistic, on_units, bootstrap, seed)

    scores = {
        "transitions": int(n),
        "files": n_files,
        "num_true_actions": int(num_labels),
        "action_ids_used": int(np.unique(ids).size),
        "nmi": normalized_mutual_information(ids, labels),
        "nmi_std": std(lambda i: normalized_mutual_information(ids[i], labels[i]), units),
        "bootstrap": {"resamples": int(bootstrap), "unit": unit_name, "seed": int(seed)},
    }
    folds = folds_by_group(files, seed=seed)
    n_folds = int(np.unique(folds).size)
    scores["probe_split"] = f"cross-fitted over {n_folds} folds by " + ("file" if n_files > 1 else "transition (one file)")
    scores["probe_folds"] = n_folds
    scores["scored_transitions"] = int(n) if n_folds >= 2 else 0
    scores["confusion"] = confusion_matrix(ids, labels, num_rows, num_labels).tolist()
    if n_folds < 2:
        return scores  # a single transition: nothing to fit a probe on

    correct = {"code_map": cross_fit(lambda fit, held: mapping_probe_predictions(ids[fit], labels[fit], ids[held]), folds) == labels}
    for name, features in (("linear_probe", z_pre), ("frame_t_minus_1_probe", frames_prev), ("frame_t_probe", frames_next)):
        if features is not None:
            x = np.asarray(features)
            correct[name] = cross_fit(lambda fit, held, x=x: linear_probe_predictions(x[fit], labels[fit], x[held]), folds) == labels
    correct["chance"] = cross_fit(lambda fit, held: np.full(held.size, majority_label(labels[fit])), folds) == labels
    for name, ok in correct.items():
        scores[f"{name}_accuracy"] = float(ok.mean())
        scores[f"{name}_accuracy_std"] = std(lambda i, ok=ok: float(ok[i].mean()), units)

    frame_probes = [p for p in FRAME_PROBES if p in correct]
    best = max(frame_probes, key=lambda p: correct[p].mean()) if frame_probes else None
    if best:
        scores["best_frame_probe"] = best
        scores["best_frame_probe_accuracy"] = float(correct[best].mean())
        for probe in ("code_map", "linear_probe"):
            if probe in correct:
                scores.update(_margin(probe, correct[probe], correct[best], units, std))

    k = kmeans_k(num_ids, n)
    if z_pre is not None and k >= 2:
        z = np.asarray(z_pre)
        km = kmeans_ids(z, z, k, seed=seed)  # unsupervised: the clusters see no label, so one fit over all is no leak
        km_ok = cross_fit(lambda fit, held: mapping_probe_predictions(km[fit], labels[fit], km[held]), folds) == labels
        kmeans = {
            "k": int(k),
            "k_rule": KMEANS_K_RULE,
            "action_ids_used": int(np.unique(km).size),
            "nmi": normalized_mutual_information(km, labels),
            "nmi_std": std(lambda i: normalized_mutual_information(km[i], labels[i]), units),
            "code_map_accuracy": float(km_ok.mean()),
            "code_map_accuracy_std": std(lambda i: float(km_ok[i].mean()), units),
        }
        if best:
            kmeans.update(_margin("code_map", km_ok, correct[best], units, std))
        scores["kmeans"] = kmeans
    return scores


def _margin(probe: str, ok: np.ndarray, ok_frame: np.ndarray, units: np.ndarray, std) -> dict:
    """A probe's accuracy minus the best frame-only probe's, with its paired bootstrap std."""
    diff = ok.astype(np.float64) - ok_frame.astype(np.float64)  # per scored transition
    return {f"{probe}_margin": float(diff.mean()), f"{probe}_margin_std": std(lambda i: float(diff[i].mean()), units)}


def group_scores(groups, ids, labels=None, files=None, z_pre=None, frames_prev=None, frames_next=None, **kwargs) -> dict:
    """Per group name (one per transition in `groups`): files, transitions, ids used and, with labels, `label_scores`."""
    groups = np.asarray(groups).reshape(-1)
    ids = as_labels(ids, "ids")
    files = np.zeros(ids.size, dtype=np.int64) if files is None else np.asarray(files).reshape(-1)
    out = {}
    for name in sorted(set(groups.tolist())):
        idx = np.flatnonzero(groups == name)
        entry = {"files": int(np.unique(files[idx]).size), "transitions": int(idx.size),
                 "action_ids_used": int(np.unique(ids[idx]).size)}
        if labels is not None:
            subset = [None if a is None else np.asarray(a)[idx] for a in (z_pre, frames_prev, frames_next)]
            entry |= label_scores(ids[idx], np.asarray(labels)[idx], files[idx], *subset, **kwargs)
        out[str(name)] = entry
    return out
