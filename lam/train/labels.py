"""The opt-in label head's data: which train transitions lend their true actions, and what a window's labels are.

With `--label_fraction F` (default 0: no labels at all), round(F x the train split's
transitions), at least one, have their true actions read with their windows; every other
transition's label is -1 (unknown). The count is dealt out over every train file that
carries an `actions` dataset, as evenly as possible, and each file's share is drawn at
random from its transitions (`label_budget`): a few labels from every video, not every
label of a few videos, which is what a labelling budget buys in practice. For a run's seed
these are exactly the transitions the label-budget ceiling of the same fraction and seed is
trained on (`bench/quality/idm.py`), so the two are compared on the same labels. Val and test files
are never chosen, so evaluation stays on files whose labels training never saw. The model's
label head (`model.label_classes`, set here from the labelled files when left at 0) learns to
read the true action off the action vector, which steers what the codes carry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lam.config import RunConfig
from lam.data.h5 import true_actions
from lam.data.manifest import Manifest
from lam.data.windows import frame_count
from lam.errors import UserError

_ACTIONS: dict[tuple[str, str], np.ndarray] = {}  # per process: a file's actions, read once


def label_budget(files: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of `round(fraction * n)` of the n transitions (at least one) whose file indices are
    `files` (n,), spread over every file: the count is dealt out to the files as evenly as
    possible (files in a seeded order take the remainder), and each file's share is drawn at
    random from its transitions."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 17])  # its own stream of the seed; cached ceilings depend on these draws
    names = np.unique(files)
    total = max(1, int(round(fraction * files.size)))
    share = np.full(names.size, total // names.size)
    share[rng.permutation(names.size)[: total % names.size]] += 1
    chosen = []
    for name, k in zip(names, share):
        members = np.flatnonzero(files == name)
        chosen.append(rng.choice(members, size=min(int(k), members.size), replace=False))
    return np.sort(np.concatenate(chosen))


def labelled_transitions(manifest: Manifest, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """The train transitions whose true actions the label head sees: {file: sorted target frames t}
    (transition t-1 -> t, t >= 1), only files with at least one; empty for fraction 0. The
    transitions are those of the train files with true actions, in split order, then t."""
    if fraction <= 0:
        return {}
    train = manifest.split_files("train")
    with_actions = [rel for rel in train if _has_actions(manifest, rel)]
    if not with_actions:
        raise UserError(f"--label_fraction {fraction}: no train file of {manifest.path or 'the manifest'} has true actions "
                        "(an `actions` dataset next to the latents)")
    counts = np.array([max(frame_count(manifest, rel) - 1, 0) for rel in with_actions])
    chosen = label_budget(np.repeat(np.arange(len(with_actions)), counts), fraction, seed)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    out = {}
    for i, rel in enumerate(with_actions):
        mine = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])]
        if mine.size:
            out[rel] = mine - offsets[i] + 1  # transition j of a file is frame j -> j+1
    return out


def _has_actions(manifest: Manifest, rel: str) -> bool:
    known = manifest.files.get(rel, {}).get("has_actions")
    return bool(known) if known is not None else true_actions(Path(manifest.data_dir) / rel) is not None


def resolve_label_classes(cfg: RunConfig, manifest: Manifest) -> dict[str, np.ndarray]:
    """The run's labelled transitions (`labelled_transitions`); sets `model.label_classes` from
    their files when it is 0."""
    labelled = labelled_transitions(manifest, cfg.train.label_fraction, cfg.train.seed)
    if labelled and not cfg.model.label_classes:
        cfg.model.label_classes = 1 + max(int(true_actions(Path(manifest.data_dir) / rel).max()) for rel in labelled)
    return labelled


def window_labels(files: list[str], starts: list[int], sequence_length: int, labelled: dict[str, np.ndarray],
                  data_dir: str | os.PathLike) -> np.ndarray:
    """(B, T-1) int64: the true action of each labelled transition of each window (transition j
    of a window starting at frame s is frame s+j -> s+j+1, labelled with the action held during
    frame s+j+1, as evaluation reads it), -1 for every other transition."""
    out = np.full((len(files), sequence_length - 1), -1, dtype=np.int64)
    for i, (rel, start) in enumerate(zip(files, starts)):
        if rel not in labelled:
            continue
        key = (str(data_dir), rel)
        if key not in _ACTIONS:
            _ACTIONS[key] = true_actions(Path(data_dir) / rel)
        t = np.arange(start + 1, start + sequence_length)
        known = np.isin(t, labelled[rel])
        out[i, known] = _ACTIONS[key][t[known]]
    return out


def label_fraction_note(cfg: RunConfig, labelled: dict[str, np.ndarray], manifest: Manifest) -> str:
    """The start-up line saying that (and how far) the run is not unsupervised."""
    total = sum(max(frame_count(manifest, rel) - 1, 0) for rel in manifest.split_files("train"))
    count = sum(t.size for t in labelled.values())
    return (f"[lam] label head: true actions of {count} of {total} train transitions ({count / max(total, 1):.1%}), "
            f"spread over {len(labelled)} of {len(manifest.split_files('train'))} train files, {cfg.model.label_classes} "
            "classes; the other transitions train without labels")

