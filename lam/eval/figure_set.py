"""The figures `lam eval` writes, from the model and a few windows, each answering one question.

The windows come from as many files as the split has, at seeded random places
(`lam.eval.evaluate.figure_windows`): windows of one video at nearby times show its agent
or pointer in one place, which made a still agent's predicted move look like a fixed
pattern of the model's in every panel.

- `changes.png`: does the model predict what changed? For a few windows, the change of the
  last frame (frame t minus frame t-1) next to the predicted change with the inferred action,
  in the channels that change most.
- `action_atlas.png`: what does each action id do? For a few contexts, the predicted change
  under every action id in use (most used first, at most `figures.ATLAS_MAX_IDS`).
- `code_usage.png`: how many ids are used, how evenly?
- `confusion.png` (with true actions), and `confusion_GROUP.png` per group of files: which
  true action does each id stand for? Columns carry the files' action names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from lam.eval import figures as F

CONTEXTS = 3  # rows of the action atlas
SAMPLES = 4  # windows in changes.png


def _most_changing_channels(change: torch.Tensor, n: int) -> list[int]:
    """The `n` channels with the largest mean squared change over `change` [S, C, H, W]."""
    energy = change.float().pow(2).mean(dim=(0, 2, 3))  # (C,)
    return torch.argsort(energy, descending=True)[:n].tolist()


def _file_name(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", group).strip("_") or "group"


@torch.no_grad()
def write_figures(model, x: torch.Tensor, report: dict, out_dir: str | Path, split: str) -> list[str]:
    """Write the figures for windows `x` [B, T, C, H, W] and the finished `report`; return their paths."""
    out_dir = Path(out_dir)
    pick = np.unique(np.linspace(0, x.shape[0] - 1, min(SAMPLES, x.shape[0])).round().astype(np.int64))  # spread over the batch
    x = x[torch.as_tensor(pick, device=x.device)]
    indices, _ = model.encode_actions(x)  # (S, T-1, K)
    pred = model.decode_with_actions(x, indices)[:, -1]  # the last frame, predicted, (S, C, H, W)
    before, after = x[:, -2], x[:, -1]
    channels = _most_changing_channels(after - before, 3)
    inferred = model.action_ids(indices[:, -1]).tolist()
    paths = [F.plot_changes(out_dir / "changes.png", before, pred, after, channels=channels, max_samples=len(pick),
                            sample_labels=[f"window {w}\ninferred id {a}" for w, a in zip(pick.tolist(), inferred)],
                            title=f"{split}: change of a window's last frame, true and predicted with the inferred action id")]

    hist = {int(i): int(c) for i, c in report["codebook"]["action_histogram"].items()}
    if hist:
        paths.append(_atlas(model, x, indices, hist, out_dir / "action_atlas.png", split, channels[0]))
    counts = np.zeros(max(hist) + 1 if hist else 1, dtype=np.int64)
    for i, c in hist.items():
        counts[i] = c
    paths.append(F.plot_code_histogram(out_dir / "code_usage.png", counts, title=f"{split}: action-id usage"))

    gt = report.get("ground_truth")
    names = gt.get("action_names") if gt else None
    if gt:
        paths.append(_confusion(out_dir / "confusion.png", gt["confusion"], names, f"{split}: action id x true action"))
    for group, scores in (report.get("groups") or {}).items():
        if "confusion" in scores:
            paths.append(_confusion(out_dir / f"confusion_{_file_name(group)}.png", scores["confusion"], names,
                                    f"{split}, group {group}: action id x true action"))
    return [str(p) for p in paths]


def _atlas(model, x, indices, hist: dict, path: Path, split: str, channel: int) -> Path:
    """Predict the last frame of the first `CONTEXTS` windows under each used id (most used first) and plot the changes."""
    ranked = sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))[: F.ATLAS_MAX_IDS]
    ids = [i for i, _ in ranked]
    ctx, n, a = x[:CONTEXTS], min(CONTEXTS, x.shape[0]), len(ids)
    codes = model.action_ids_to_indices(torch.tensor(ids, device=x.device))  # (A, K)
    idx = indices[:n].repeat_interleave(a, dim=0).clone()  # (n*A, T-1, K): the inferred actions ...
    idx[:, -1] = codes.repeat(n, 1)  # ... except the last transition, which tries every id
    pred = model.decode_with_actions(ctx.repeat_interleave(a, dim=0), idx)[:, -1]  # (n*A, C, H, W)
    change = pred.reshape(n, a, *pred.shape[1:]) - ctx[:, -2].unsqueeze(1)  # (n, A, C, H, W)
    inferred = model.action_ids(indices[:n, -1]).tolist()
    return F.plot_action_atlas(
        path, change[:, :, channel], (ctx[:, -1] - ctx[:, -2])[:, channel],
        action_labels=[f"id {i}\n(n={c})" for i, c in ranked],
        context_labels=[f"context {s}\ninferred id {i}" for s, i in enumerate(inferred)],
        title=f"{split}: predicted change under each action id in use (channel {channel}, most used ids first)",
    )


def _confusion(path: Path, confusion, names, title: str) -> Path:
    """The confusion matrix's rows of the ids in use (rows of unused ids are all 0 and hide the rest)."""
    matrix = np.asarray(confusion)  # (ids, true actions)
    used = np.flatnonzero(matrix.sum(axis=1) > 0)
    if used.size:
        matrix = matrix[used]
    true_labels = names[: matrix.shape[1]] if names and len(names) >= matrix.shape[1] else None
    return F.plot_confusion(path, matrix, code_labels=[str(i) for i in used] if used.size else None,
                            true_labels=true_labels, title=f"{title} (ids in use)")
