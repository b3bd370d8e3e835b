"""Evaluation metrics for latent actions: pure functions over numpy arrays or torch tensors.

Two questions are asked of a trained latent action model:

1. *Does it predict well?*  `psnr_from_mse` on an MSE accumulated over a whole evaluation.
2. *Do its action ids mean anything?*  Compare the id assigned to each transition
   `z[t-1] -> z[t]` with the ground-truth action held during latent frame `t`:
   `normalized_mutual_information` (scikit-learn's), against `majority_chance`;
   the probes are in `lam.eval.probes`. `code_usage` and `confusion_matrix`
   show how the codebook is used.

Probes are fitted on one part of the data and scored on another. The evaluation
cross-fits them over folds of *files* (`folds_by_group` with the file of each
transition as its group): each fold is scored by a probe fitted on the others, so every
transition is scored exactly once and no transition of a scored video was seen by its
probe. `split_by_group` and `split_fit_eval` are the plain two-part splits (by group, by
sample). `bootstrap_std` gives the sampling error of a score by resampling whole files.

PSNR peak. Latents are not images with a fixed range, so the peak is a choice: the
evaluation uses the range (max - min) of the evaluated targets, one number for the whole
evaluation, so every sample and every model of it is measured against the same peak.

Every function accepts numpy arrays or torch tensors (any device, any float dtype)
and returns plain Python floats / numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # np.ndarray | torch.Tensor | sequence

# scikit-learn is imported where it is used: training workers import these metrics, and every
# worker would otherwise pay for loading it at start-up.


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view/copy of `x`; torch tensors are detached, moved to CPU, and low-precision floats widened."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # numpy has no bfloat16
        return x.numpy()
    return np.asarray(x)


def as_labels(x: ArrayLike, name: str = "labels") -> np.ndarray:
    """A 1-D integer label array (flattening any extra dims)."""
    a = to_numpy(x).reshape(-1)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------- prediction quality


def psnr_from_mse(mse: float, peak: float) -> float:
    """PSNR in dB from an already averaged MSE: `10 * log10(peak**2 / mse)`; `inf` when `mse == 0`.

    Use it to convert a mean squared error accumulated over a whole evaluation once,
    rather than averaging per-batch PSNRs. `peak` must be > 0 and `mse` >= 0.
    """
    mse, peak = float(mse), float(peak)
    if peak <= 0:
        raise ValueError(f"peak must be > 0, got {peak}")
    if mse < 0:
        raise ValueError(f"mse must be >= 0, got {mse}")
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


# ----------------------------------------------------------------------------- do the ids mean anything?


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution given by non-negative counts."""
    c = counts[counts > 0].astype(np.float64)
    if c.size == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(a: ArrayLike, b: ArrayLike) -> float:
    """NMI of two labelings of the same samples: scikit-learn's `normalized_mutual_info_score`.

    Its default arithmetic normalisation, `I(a;b) / ((H(a) + H(b)) / 2)`. It is
    invariant to renaming the labels: 1.0 when one labeling is a relabeling
    (permutation) of the other, about 0 for independent labels. Many-to-one (several
    codes per action) scores below 1 because H(codes) exceeds I.

    Degenerate cases (scikit-learn's): when both labelings are constant they are the
    same one-block partition, so 1.0; when only one is constant, I = 0, so 0.0.
    Empty inputs and inputs of different lengths raise ValueError.
    """
    x, y = as_labels(a, "a"), as_labels(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"label arrays differ in length: {x.size} vs {y.size}")
    if x.size == 0:
        raise ValueError("normalized_mutual_information of empty label arrays")
    from sklearn.metrics import normalized_mutual_info_score

    nmi = normalized_mutual_info_score(x, y)
    return float(min(max(nmi, 0.0), 1.0))  # clip floating-point round-off


def majority_label(labels: np.ndarray) -> int:
    """The most frequent label; ties go to the smallest label."""
    values, counts = np.unique(labels, return_counts=True)  # values sorted ascending
    return int(values[np.argmax(counts)])  # argmax takes the first max


def majority_chance(labels_fit: ArrayLike, labels_eval: ArrayLike) -> float:
    """Accuracy on the eval part of always predicting the fit part's majority label: the baseline for probes."""
    fit, ev = as_labels(labels_fit, "labels_fit"), as_labels(labels_eval, "labels_eval")
    if fit.size == 0 or ev.size == 0:
        raise ValueError("majority_chance needs non-empty fit and eval labels")
    return float(np.mean(ev == majority_label(fit)))


# ----------------------------------------------------------------------------- splits


def split_fit_eval(n: int, fit_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices `0..n-1` at random into a fit part and an eval part (sorted int64 arrays).

    The fit part has `round(fit_fraction * n)` samples, kept within `[1, n-1]` when
    `n >= 2` so both parts are non-empty. Deterministic for `(n, fit_fraction, seed)`.
    Prefer `split_by_group` by file when samples of one file are correlated.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    n_fit = _part_size(n, fit_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_fit]).astype(np.int64), np.sort(perm[n_fit:]).astype(np.int64)


def split_by_group(groups: ArrayLike, fit_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split samples so that every group (e.g. a file) lies wholly on one side; returns sorted index arrays.

    `groups[i]` is the group of sample i (ints or strings such as relative file
    paths). `fit_fraction` is a fraction of *groups*, not samples:
    `round(fit_fraction * n_groups)` groups, kept within `[1, n_groups-1]` when there
    are >= 2 groups. The distinct groups are sorted before shuffling, so the split is
    deterministic for a seed whatever the order of the samples.
    """
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    g = to_numpy(groups).reshape(-1)
    unique, inverse = np.unique(g, return_inverse=True)  # unique is sorted
    n_fit = _part_size(unique.size, fit_fraction)
    perm = np.random.default_rng(seed).permutation(unique.size)
    is_fit_group = np.zeros(unique.size, dtype=bool)
    is_fit_group[perm[:n_fit]] = True
    is_fit = is_fit_group[inverse.reshape(-1)]  # (n_samples,)
    return np.flatnonzero(is_fit).astype(np.int64), np.flatnonzero(~is_fit).astype(np.int64)


PROBE_FOLDS = 5  # cross-fitting folds: each probe is fitted on 4/5 of the files and scores the other 1/5


def folds_by_group(groups: ArrayLike, n_folds: int = PROBE_FOLDS, seed: int = 0) -> np.ndarray:
    """The cross-fitting fold (0..k-1) of every sample, with every group (e.g. a file) wholly in one fold.

    The distinct groups are sorted, shuffled with `seed` and dealt round-robin into
    `k = min(n_folds, n_groups)` folds, so the folds differ in size by at most one group
    and the assignment is deterministic for a seed whatever the order of the samples. With
    a single group the samples themselves are dealt out (there is nothing else to split).
    Scoring fold j with a probe fitted on the other folds scores every sample exactly once.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    g = to_numpy(groups).reshape(-1)
    unique, inverse = np.unique(g, return_inverse=True)  # unique is sorted
    inverse = inverse.reshape(-1)
    if unique.size < 2:  # one file: fold its samples instead
        unique, inverse = np.arange(g.size), np.arange(g.size)
    k = min(n_folds, unique.size)
    fold_of_group = np.empty(unique.size, dtype=np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(unique.size)] = np.arange(unique.size) % max(k, 1)
    return fold_of_group[inverse]


def cross_fit(predict: Callable[[np.ndarray, np.ndarray], np.ndarray], folds: ArrayLike) -> np.ndarray:
    """Out-of-fold predictions: for each fold j, `predict(fit_indices, eval_indices)` with the
    samples of the other folds as the fit part and fold j as the eval part; returns one
    prediction per sample (int64), in sample order. Needs at least two folds."""
    f = to_numpy(folds).reshape(-1)
    out = np.empty(f.size, dtype=np.int64)
    names = np.unique(f)
    if names.size < 2:
        raise ValueError("cross-fitting needs at least two folds")
    for j in names:
        held = np.flatnonzero(f == j)
        out[held] = predict(np.flatnonzero(f != j), held)
    return out


def _part_size(n: int, fraction: float) -> int:
    k = int(round(fraction * n))
    if n >= 2:
        k = min(max(k, 1), n - 1)
    return k


# ----------------------------------------------------------------------------- codebook use


def code_usage(ids: ArrayLike, num_ids: int) -> dict:
    """How the action ids are used.

    Returns `usage` (fraction of the `num_ids` ids used at least once), `perplexity`
    (`exp` of the entropy of the empirical id distribution: the effective number of
    ids in use, between 1 and `num_ids`), `num_used` (count of ids used) and
    `histogram` (list of `num_ids` counts). For no ids at all: usage 0, perplexity 0.
    Ids must lie in `[0, num_ids)`.
    """
    x = as_labels(ids, "ids")
    if x.size and (x.min() < 0 or x.max() >= num_ids):
        raise ValueError(f"ids must lie in [0, {num_ids})")
    counts = np.bincount(x, minlength=num_ids)  # (num_ids,)
    num_used = int((counts > 0).sum())
    perplexity = math.exp(_entropy(counts)) if x.size else 0.0
    return {
        "usage": num_used / num_ids,
        "perplexity": float(perplexity),
        "num_used": num_used,
        "histogram": counts.astype(int).tolist(),
    }


def confusion_matrix(codes: ArrayLike, labels: ArrayLike, num_codes: int, num_labels: int) -> np.ndarray:
    """Co-occurrence counts `[num_codes, num_labels]` (int64): row = action id, column = true action.

    scikit-learn's `confusion_matrix(codes, labels)` counts, in cell (i, j), the samples
    whose first labeling is i and second is j, over one list of values for both. Codes
    and true actions have different ranges, so both are counted over
    `0 .. max(num_codes, num_labels) - 1` and the square is cut to `[num_codes, num_labels]`.
    """
    c, y = as_labels(codes, "codes"), as_labels(labels, "labels")
    if c.shape != y.shape:
        raise ValueError(f"codes and labels differ in length: {c.size} vs {y.size}")
    if c.size and (c.min() < 0 or c.max() >= num_codes):
        raise ValueError(f"codes must lie in [0, {num_codes})")
    if y.size and (y.min() < 0 or y.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels})")
    if c.size == 0 or max(num_codes, num_labels) == 1:  # nothing to count, or one cell holding everything
        return np.full((num_codes, num_labels), c.size, dtype=np.int64)
    values = np.arange(max(num_codes, num_labels))
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    square = sk_confusion_matrix(c, y, labels=values)  # (n_values, n_values)
    return square[:num_codes, :num_labels].astype(np.int64)


# ----------------------------------------------------------------------------- sampling error


def bootstrap_std(statistic: Callable[[np.ndarray], float], units: ArrayLike, resamples: int = 200, seed: int = 0) -> float:
    """Sampling error of a score: its std over resamples of whole units (files) drawn with replacement.

    `units[i]` is the unit (e.g. the file) of sample i; `statistic(indices)` computes
    the score on the samples `indices` (repeats allowed). Each resample draws as many
    units as there are, with replacement, and takes all their samples, because
    transitions of one file are correlated and resampling them one by one would
    understate the error. Deterministic for `seed`; 0.0 for fewer than 2 resamples
    or when every resample gives the same score (e.g. a constant input).
    """
    u = to_numpy(units).reshape(-1)
    if resamples < 2 or u.size == 0:
        return 0.0
    _, inverse = np.unique(u, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])  # sample indices of each unit
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(members), len(members))
        values.append(statistic(np.concatenate([members[p] for p in pick])))
    values = np.asarray(values, dtype=np.float64)
    if np.all(values == values[0]):
        return 0.0  # identical scores: no spread, without round-off
    return float(np.std(values, ddof=1))
