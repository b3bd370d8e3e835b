"""The opt-in label head's data: which train files lend their true actions, and what a window's labels are.

With `--label_fraction F` (default 0: no labels at all), a seeded choice of round(F x the
train split's files), at least one, among those that carry an `actions` dataset, have their
true actions read with their windows; every other window's labels are -1 (unknown). Val and
test files are never chosen, so evaluation stays on files whose labels training never saw.
The model's label head (`model.label_classes`, set here from the chosen files when left at
0) learns to read the true action off the action vector, which steers what the codes carry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lam.config import RunConfig
from lam.data.h5 import true_actions
from lam.data.manifest import Manifest
from lam.errors import UserError

# The SeedSequence child of the run's seed that draws the labelled files (the data order
# uses children (epoch,), the per-epoch RNG (epoch, rank)).
LABEL_STREAM = 2**31 - 1

_ACTIONS: dict[tuple[str, str], np.ndarray] = {}  # per process: a file's actions, read once


def labelled_files(manifest: Manifest, fraction: float, seed: int) -> list[str]:
    """The train files whose true actions the label head sees (sorted); empty for fraction 0."""
    if fraction <= 0:
        return []
    train = manifest.split_files("train")
    with_actions = [rel for rel in train if _has_actions(manifest, rel)]
    if not with_actions:
        raise UserError(f"--label_fraction {fraction}: no train file of {manifest.path or 'the manifest'} has true actions "
                        "(an `actions` dataset next to the latents)")
    count = min(len(with_actions), max(1, round(fraction * len(train))))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(LABEL_STREAM,)))
    return sorted(rng.choice(with_actions, size=count, replace=False).tolist())


def _has_actions(manifest: Manifest, rel: str) -> bool:
    known = manifest.files.get(rel, {}).get("has_actions")
    return bool(known) if known is not None else true_actions(Path(manifest.data_dir) / rel) is not None


def resolve_label_classes(cfg: RunConfig, manifest: Manifest) -> list[str]:
    """The run's labelled files; sets `model.label_classes` from them when it is 0."""
    files = labelled_files(manifest, cfg.train.label_fraction, cfg.train.seed)
    if files and not cfg.model.label_classes:
        cfg.model.label_classes = 1 + max(int(true_actions(Path(manifest.data_dir) / rel).max()) for rel in files)
    return files


def window_labels(files: list[str], starts: list[int], sequence_length: int, labelled: frozenset[str],
                  data_dir: str | os.PathLike) -> np.ndarray:
    """(B, T-1) int64: the true action of each transition of each window (transition j of a window
    starting at frame s is frame s+j -> s+j+1, labelled with the action held during frame s+j+1,
    as evaluation reads it), -1 for windows of files without labels."""
    out = np.full((len(files), sequence_length - 1), -1, dtype=np.int64)
    for i, (rel, start) in enumerate(zip(files, starts)):
        if rel in labelled:
            key = (str(data_dir), rel)
            if key not in _ACTIONS:
                _ACTIONS[key] = true_actions(Path(data_dir) / rel)
            out[i] = _ACTIONS[key][start + 1 : start + sequence_length]
    return out


def label_fraction_note(cfg: RunConfig, files: list[str], n_train: int) -> str:
    """The start-up line saying that (and how far) the run is not unsupervised."""
    return (f"[lam] label head: true actions of {len(files)} of {n_train} train files ({len(files) / n_train:.1%}), "
            f"{cfg.model.label_classes} classes; the other windows train without labels")

