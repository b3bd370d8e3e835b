"""Probes: how much of the true action can be read off a representation, fitted on one part, scored on another.

- `mapping_probe_predictions` / `mapping_probe_accuracy`: a majority-vote code -> action
  map, for discrete ids (the model's action ids, or k-means ids).
- `linear_probe_predictions` / `linear_probe_accuracy`: scikit-learn's
  `LogisticRegression` (multinomial, L2, lbfgs: deterministic) on features standardised
  with the fit part's statistics, for continuous features (the pre-quantisation
  vectors, or a pooled frame for the leakage control).
- `pool_frames`: a latent frame averaged down to a small grid per channel, the feature
  of the leakage control (can the action be read from frame t-1 alone, or frame t alone?).
- `kmeans_ids`: k-means (`sklearn.cluster.KMeans`) on continuous vectors, fitted on the
  fit part only, so a continuous bottleneck gets discrete ids scored like the model's.

Every function accepts numpy arrays or torch tensors and returns numpy arrays or floats.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from lam.eval.metrics import ArrayLike, as_labels, majority_label, to_numpy

# scikit-learn is imported where it is used: training workers import the evaluation for
# validation, and every worker would otherwise pay for loading it at start-up.

# Side of the grid a frame is averaged down to for the leakage probes: 8x8 per channel keeps
# where things are (an 8x8 agent in a 64x64 latent still moves the block averages) in few features.
FRAME_POOL = 8

KMEANS_K_RULE = "min(action ids, max(2, clustered transitions // 10)): on average at least 10 transitions per cluster"


def _parts(features_fit, labels_fit, features_eval, labels_eval=None):
    xf = to_numpy(features_fit).astype(np.float64, copy=False)
    xe = to_numpy(features_eval).astype(np.float64, copy=False)
    xf, xe = xf.reshape(xf.shape[0], -1), xe.reshape(xe.shape[0], -1)  # (N, D)
    yf = as_labels(labels_fit, "labels_fit")
    if xf.shape[0] != yf.shape[0] or (labels_eval is not None and xe.shape[0] != as_labels(labels_eval).shape[0]):
        raise ValueError("features and labels must have the same length on each part")
    if xf.shape[0] == 0 or xe.shape[0] == 0:
        raise ValueError("a probe needs non-empty fit and eval parts")
    if xf.shape[1] != xe.shape[1]:
        raise ValueError(f"feature dims differ: fit {xf.shape[1]} vs eval {xe.shape[1]}")
    return xf, yf, xe


# ----------------------------------------------------------------------------- discrete ids


def mapping_probe_predictions(codes_fit: ArrayLike, labels_fit: ArrayLike, codes_eval: ArrayLike) -> np.ndarray:
    """The action predicted for each eval code by a majority-vote code -> action map fitted on the fit part.

    Every code is mapped to the action it co-occurs with most on the fit part (ties:
    the smallest action). Codes never seen in the fit part are mapped to the fit
    part's overall majority action, so an unseen code scores like chance. Many codes
    may map to one action.
    """
    cf, lf, ce = as_labels(codes_fit, "codes_fit"), as_labels(labels_fit, "labels_fit"), as_labels(codes_eval, "codes_eval")
    if cf.shape != lf.shape:
        raise ValueError("codes and labels must have the same length on each part")
    if cf.size == 0:
        raise ValueError("mapping probe needs a non-empty fit part")
    codes, code_idx = np.unique(cf, return_inverse=True)
    labels, label_idx = np.unique(lf, return_inverse=True)
    table = np.zeros((codes.size, labels.size), dtype=np.int64)  # (n_codes_seen, n_labels_seen)
    np.add.at(table, (code_idx, label_idx), 1)
    code_to_label = dict(zip(codes.tolist(), labels[np.argmax(table, axis=1)].tolist()))
    fallback = majority_label(lf)
    return np.array([code_to_label.get(c, fallback) for c in ce.tolist()], dtype=np.int64)


def mapping_probe_accuracy(codes_fit: ArrayLike, labels_fit: ArrayLike, codes_eval: ArrayLike, labels_eval: ArrayLike) -> float:
    """Accuracy on the eval part of `mapping_probe_predictions` (1.0 when each code always means one action)."""
    le = as_labels(labels_eval, "labels_eval")
    if le.size == 0 or le.shape != as_labels(codes_eval).shape:
        raise ValueError("mapping_probe_accuracy needs a non-empty eval part with one label per code")
    return float(np.mean(mapping_probe_predictions(codes_fit, labels_fit, codes_eval) == le))


# ----------------------------------------------------------------------------- continuous features


def linear_probe_predictions(features_fit: ArrayLike, labels_fit: ArrayLike, features_eval: ArrayLike,
                             C: float = 1.0, max_iter: int = 1000) -> np.ndarray:
    """The action predicted for each eval sample by a logistic regression fitted on the fit part.

    Features `[N, ...]` are flattened to `[N, D]` and standardised with the fit part's
    mean and std (`StandardScaler`; constant features become 0), so the eval part never
    leaks into the fit. `LogisticRegression(C, solver="lbfgs")` is multinomial with an
    L2 penalty and deterministic. When the fit part holds one action only, that action
    is predicted everywhere (a regression needs two).
    """
    xf, yf, xe = _parts(features_fit, labels_fit, features_eval)
    if np.unique(yf).size < 2:
        return np.full(xe.shape[0], yf[0], dtype=np.int64)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe that has not fully converged still scores
        probe = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(xf), yf)
    return probe.predict(scaler.transform(xe)).astype(np.int64)


def linear_probe_accuracy(features_fit: ArrayLike, labels_fit: ArrayLike, features_eval: ArrayLike, labels_eval: ArrayLike,
                          num_classes: int | None = None, C: float = 1.0, max_iter: int = 1000) -> float:
    """Accuracy on the eval part of `linear_probe_predictions`; labels, when `num_classes` is given, must lie in `[0, num_classes)`."""
    yf, ye = as_labels(labels_fit, "labels_fit"), as_labels(labels_eval, "labels_eval")
    if num_classes is not None:
        for name, y in (("labels_fit", yf), ("labels_eval", ye)):
            if y.size and (y.min() < 0 or y.max() >= num_classes):
                raise ValueError(f"{name} must lie in [0, {num_classes})")
    _parts(features_fit, yf, features_eval, ye)
    return float(np.mean(linear_probe_predictions(features_fit, yf, features_eval, C=C, max_iter=max_iter) == ye))


def pool_frames(frames: torch.Tensor, size: int = FRAME_POOL) -> np.ndarray:
    """Latent frames `[N, C, H, W]` averaged down to `[N, C * size * size]` float32 (area averages per channel)."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(frames.float(), size)  # (N, C, size, size)
    return pooled.reshape(frames.shape[0], -1).cpu().numpy()


# ----------------------------------------------------------------------------- k-means ids


def kmeans_k(num_ids: int, n_fit: int) -> int:
    """Clusters for `n_fit` fit vectors: as many as the model has ids, but few enough that each can have data."""
    return int(min(num_ids, max(2, n_fit // 10)))


def kmeans_ids(features_fit: ArrayLike, features: ArrayLike, k: int, seed: int = 0) -> np.ndarray:
    """K-means ids of `features`, with clusters fitted on `features_fit` only (k-means++ start, seeded: deterministic)."""
    xf = to_numpy(features_fit).astype(np.float64, copy=False)
    x = to_numpy(features).astype(np.float64, copy=False)
    xf, x = xf.reshape(xf.shape[0], -1), x.reshape(x.shape[0], -1)
    if xf.shape[0] < k:
        raise ValueError(f"k-means with k={k} needs at least {k} fit vectors, got {xf.shape[0]}")
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct vectors than k: some clusters stay empty
        model = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(xf)
    return model.predict(x).astype(np.int64)
