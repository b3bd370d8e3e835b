"""Evaluation metrics for latent actions: pure functions over numpy arrays or torch tensors.

Two questions are asked of a trained latent action model:

1. *Does it predict well?*  `psnr_from_mse` on an MSE accumulated over a whole evaluation.
2. *Do its action ids mean anything?*  Compare the id assigned to each transition
   `z[t-1] -> z[t]` with the ground-truth action held during latent frame `t`:
   `normalized_mutual_information`, `mapping_probe_accuracy` (majority-vote code ->
   action map), `linear_probe_accuracy` (logistic regression on continuous
   features), each against `majority_chance`. `code_usage` and `confusion_matrix`
   show how the codebook is used.

Probes are fitted on one part of the data and scored on another. Split by *file*
(`split_by_group` with the file of each transition as its group) so that no
transition of an evaluated video was seen by the probe; `split_fit_eval` is the
plain per-sample split for when there is no grouping.

PSNR peak. Latents are not images with a fixed range, so the peak is a choice: the
evaluation uses the range (max - min) of the evaluated targets, one number for the whole
evaluation, so every sample and every model of it is measured against the same peak.

Every function accepts numpy arrays or torch tensors (any device, any float dtype)
and returns plain Python floats / numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # np.ndarray | torch.Tensor | sequence


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view/copy of `x`; torch tensors are detached, moved to CPU, and low-precision floats widened."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # numpy has no bfloat16
        return x.numpy()
    return np.asarray(x)


def _labels(x: ArrayLike, name: str) -> np.ndarray:
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


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts of each (a-value, b-value) pair: `[n_distinct_a, n_distinct_b]`, int64."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution given by non-negative counts."""
    c = counts[counts > 0].astype(np.float64)
    if c.size == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(a: ArrayLike, b: ArrayLike) -> float:
    """NMI of two labelings of the same samples, arithmetic normalisation: `2 I(a;b) / (H(a) + H(b))`.

    Equals sklearn's `normalized_mutual_info_score` with its default
    `average_method="arithmetic"`. It is invariant to renaming the labels: 1.0 when
    one labeling is a relabeling (permutation) of the other, about 0 for independent
    labels. Many-to-one (several codes per action) scores below 1 because H(codes)
    exceeds I.

    Degenerate cases: when both labelings are constant (H(a) = H(b) = 0) they are the
    same one-block partition, so 1.0; when only one is constant, I = 0, so 0.0.
    Empty inputs raise ValueError.
    """
    x, y = _labels(a, "a"), _labels(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"label arrays differ in length: {x.size} vs {y.size}")
    if x.size == 0:
        raise ValueError("normalized_mutual_information of empty label arrays")

    table = _contingency(x, y).astype(np.float64)  # (n_a, n_b)
    n = table.sum()
    h_a = _entropy(table.sum(axis=1))
    h_b = _entropy(table.sum(axis=0))
    if h_a + h_b == 0.0:
        return 1.0  # both constant: identical (single-block) partitions

    p_ab = table / n
    p_a = p_ab.sum(axis=1, keepdims=True)  # (n_a, 1)
    p_b = p_ab.sum(axis=0, keepdims=True)  # (1, n_b)
    nz = p_ab > 0
    mi = float((p_ab[nz] * np.log(p_ab[nz] / (p_a @ p_b)[nz])).sum())
    nmi = 2.0 * max(mi, 0.0) / (h_a + h_b)
    return float(min(max(nmi, 0.0), 1.0))  # clip floating-point round-off


def _majority_label(labels: np.ndarray) -> int:
    """The most frequent label; ties go to the smallest label."""
    values, counts = np.unique(labels, return_counts=True)  # values sorted ascending
    return int(values[np.argmax(counts)])  # argmax takes the first max


def majority_chance(labels_fit: ArrayLike, labels_eval: ArrayLike) -> float:
    """Accuracy on the eval part of always predicting the fit part's majority label: the baseline for probes."""
    fit, ev = _labels(labels_fit, "labels_fit"), _labels(labels_eval, "labels_eval")
    if fit.size == 0 or ev.size == 0:
        raise ValueError("majority_chance needs non-empty fit and eval labels")
    return float(np.mean(ev == _majority_label(fit)))


def mapping_probe_accuracy(
    codes_fit: ArrayLike, labels_fit: ArrayLike, codes_eval: ArrayLike, labels_eval: ArrayLike
) -> float:
    """Accuracy of a majority-vote code -> action map, fitted on one part and scored on the other.

    On the fit part every code is mapped to the action it co-occurs with most (ties:
    the smallest action). Codes never seen in the fit part are mapped to the fit
    part's overall majority action, so an unseen code scores like chance. Many codes
    may map to one action (that is allowed and still scores 1.0 if consistent).
    """
    cf, lf = _labels(codes_fit, "codes_fit"), _labels(labels_fit, "labels_fit")
    ce, le = _labels(codes_eval, "codes_eval"), _labels(labels_eval, "labels_eval")
    if cf.shape != lf.shape or ce.shape != le.shape:
        raise ValueError("codes and labels must have the same length on each part")
    if cf.size == 0 or ce.size == 0:
        raise ValueError("mapping_probe_accuracy needs non-empty fit and eval parts")

    codes, code_idx = np.unique(cf, return_inverse=True)
    labels, label_idx = np.unique(lf, return_inverse=True)
    table = np.zeros((codes.size, labels.size), dtype=np.int64)  # (n_codes_seen, n_labels_seen)
    np.add.at(table, (code_idx, label_idx), 1)
    code_to_label = dict(zip(codes.tolist(), labels[np.argmax(table, axis=1)].tolist()))

    fallback = _majority_label(lf)
    pred = np.array([code_to_label.get(c, fallback) for c in ce.tolist()], dtype=np.int64)
    return float(np.mean(pred == le))


def linear_probe_accuracy(
    features_fit: ArrayLike,
    labels_fit: ArrayLike,
    features_eval: ArrayLike,
    labels_eval: ArrayLike,
    num_classes: int,
    steps: int = 300,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
    num_threads: int | None = 1,
) -> float:
    """Accuracy on the eval part of a multinomial logistic regression fitted on the fit part.

    Features `[N, ...]` are flattened to `[N, D]` and standardised with the fit part's
    mean and std (so the eval part never leaks into the fit). Training is full batch
    Adam for `steps` steps on cross-entropy plus `weight_decay * ||W||^2` (bias not
    decayed), in float64 on CPU: the result is deterministic for a given `seed`.
    Labels must lie in `[0, num_classes)`.

    `num_threads` (default 1) is torch's intra-op thread count while fitting,
    restored afterwards; None leaves it alone. One thread is the default because
    the matrices are small, so thread start-up dominates (on a busy 2-core machine
    two threads made a small probe far slower), and because a fixed thread count
    keeps the float reductions, hence the result, the same on every machine.
    """
    xf = torch.as_tensor(to_numpy(features_fit), dtype=torch.float64)
    xe = torch.as_tensor(to_numpy(features_eval), dtype=torch.float64)
    yf = torch.as_tensor(_labels(labels_fit, "labels_fit"))
    ye = torch.as_tensor(_labels(labels_eval, "labels_eval"))
    xf = xf.reshape(xf.shape[0], -1)  # (N_fit, D)
    xe = xe.reshape(xe.shape[0], -1)  # (N_eval, D)
    if xf.shape[0] != yf.shape[0] or xe.shape[0] != ye.shape[0]:
        raise ValueError("features and labels must have the same length on each part")
    if xf.shape[0] == 0 or xe.shape[0] == 0:
        raise ValueError("linear_probe_accuracy needs non-empty fit and eval parts")
    if xf.shape[1] != xe.shape[1]:
        raise ValueError(f"feature dims differ: fit {xf.shape[1]} vs eval {xe.shape[1]}")
    for name, y in (("labels_fit", yf), ("labels_eval", ye)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes})")

    # standardise with fit statistics only; constant features become 0
    mean = xf.mean(dim=0, keepdim=True)  # (1, D)
    std = xf.std(dim=0, unbiased=False, keepdim=True).clamp_min(1e-8)  # (1, D)
    xf = (xf - mean) / std
    xe = (xe - mean) / std

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        gen = torch.Generator().manual_seed(seed)
        dim = xf.shape[1]
        weight = (torch.randn(dim, num_classes, generator=gen, dtype=torch.float64) * 0.01).requires_grad_()
        bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            logits = xf @ weight + bias  # (N_fit, num_classes)
            loss = torch.nn.functional.cross_entropy(logits, yf) + weight_decay * weight.pow(2).sum()
            loss.backward()
            opt.step()

        with torch.no_grad():
            pred = (xe @ weight + bias).argmax(dim=1)  # (N_eval,)
    finally:
        torch.set_num_threads(previous_threads)
    return float((pred == ye).double().mean())


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
    x = _labels(ids, "ids")
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
    """Co-occurrence counts `[num_codes, num_labels]` (int64): row = action id, column = true action."""
    c, y = _labels(codes, "codes"), _labels(labels, "labels")
    if c.shape != y.shape:
        raise ValueError(f"codes and labels differ in length: {c.size} vs {y.size}")
    if c.size and (c.min() < 0 or c.max() >= num_codes):
        raise ValueError(f"codes must lie in [0, {num_codes})")
    if y.size and (y.min() < 0 or y.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels})")
    matrix = np.zeros((num_codes, num_labels), dtype=np.int64)
    np.add.at(matrix, (c, y), 1)
    return matrix
