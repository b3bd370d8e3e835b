"""PNG figures for evaluating a latent action model: predictions, action-id usage, code x action confusion.

    from lam.eval.figures import plot_predictions, plot_code_histogram, plot_confusion
    plot_predictions("out/pred.png", context, predicted, target)   # each [S, C, H, W]
    plot_code_histogram("out/codes.png", counts)                    # [num_ids]
    plot_confusion("out/confusion.png", matrix)                     # [num_codes, num_actions]

Rendering is headless: figures are built with matplotlib's object-oriented API
(`matplotlib.figure.Figure` drawn by the Agg canvas), never through `pyplot`, so no
window opens, no global pyplot state is touched (safe in Ray workers and threads),
and a figure is freed as soon as it is saved.

Every function creates the parent directories, writes the PNG, closes the figure and
returns the `Path` written. Inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lam.eval.metrics import to_numpy

# Above this many ids / codes, only the ones that occur are drawn.
MAX_ALL_IDS = 64
DPI = 100


def _new_figure(width_in: float, height_in: float) -> Any:
    """A Figure attached to the Agg (PNG, no window) canvas, with constrained layout."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")  # fits colorbars and titles
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    """Write `fig` as PNG to `path` (parents created), release it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        fig.clear()  # a pyplot-free Figure has no window to close; drop its artists now
    return path


# ----------------------------------------------------------------------------- predictions


def plot_predictions(
    path: str | Path,
    context: Any,
    predicted: Any,
    target: Any,
    channels: Sequence[int] = (0, 1, 2),
    max_samples: int = 4,
    title: str = "",
) -> Path:
    """Side by side: last context frame, predicted frame, target frame, for a few samples and channels.

    `context`, `predicted`, `target`: `[S, C, H, W]` latent frames (context is the
    frame `t-1` the prediction of frame `t` starts from). One row per (sample,
    channel), columns context | predicted | target. Each channel has one color scale
    shared by all its panels (min/max over the shown samples of the three arrays), so
    brightness is comparable along a row and across samples. Channels beyond `C` are
    skipped.
    """
    ctx, pred, tgt = (to_numpy(a).astype(np.float32, copy=False) for a in (context, predicted, target))
    if not (ctx.shape == pred.shape == tgt.shape) or ctx.ndim != 4:
        raise ValueError(f"expected three [S, C, H, W] arrays of one shape, got {ctx.shape}, {pred.shape}, {tgt.shape}")
    n_samples = min(max_samples, ctx.shape[0])
    chans = [c for c in channels if 0 <= c < ctx.shape[1]]
    if n_samples == 0 or not chans:
        raise ValueError("nothing to plot: no samples or no valid channels")
    ctx, pred, tgt = ctx[:n_samples], pred[:n_samples], tgt[:n_samples]  # (S', C, H, W)

    # one color scale per channel, over everything shown
    stacked = np.stack([ctx, pred, tgt])  # (3, S', C, H, W)
    vmin = {c: float(stacked[:, :, c].min()) for c in chans}
    vmax = {c: float(stacked[:, :, c].max()) for c in chans}

    columns = [("context (t-1)", ctx), ("predicted (t)", pred), ("target (t)", tgt)]
    n_rows = n_samples * len(chans)
    fig = _new_figure(3 * 2.0 + 0.6, n_rows * 1.9 + (0.5 if title else 0.2))
    axes = fig.subplots(n_rows, 3, squeeze=False)  # (rows, 3)
    for s in range(n_samples):
        for ci, c in enumerate(chans):
            row = s * len(chans) + ci
            for col, (name, arr) in enumerate(columns):
                ax = axes[row, col]
                im = ax.imshow(arr[s, c], cmap="viridis", vmin=vmin[c], vmax=vmax[c], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(name, fontsize=9)
                if col == 0:
                    ax.set_ylabel(f"sample {s}\nchannel {c}", fontsize=8)
            fig.colorbar(im, ax=axes[row, :].tolist(), fraction=0.04, pad=0.02)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- action-id usage


def plot_code_histogram(path: str | Path, counts: Any, title: str = "") -> Path:
    """Bar chart of how often each action id was assigned.

    `counts`: `[num_ids]` (e.g. `code_usage(...)["histogram"]`). With up to
    `MAX_ALL_IDS` ids every id gets a bar at its own position. With more (12^3 = 1,728
    actions), only the used ids are drawn, sorted by count (most used first, a rank
    on the x axis), which makes collapse easy to read off; the title says so.
    """
    c = to_numpy(counts).reshape(-1).astype(np.int64)  # (num_ids,)
    num_ids = c.size
    used = int((c > 0).sum())
    summary = f"{used} of {num_ids} ids used"

    if num_ids <= MAX_ALL_IDS:
        ids, heights = np.arange(num_ids), c
        note, xlabel = summary, "action id"
    else:
        ids = np.flatnonzero(c > 0)
        ids = ids[np.argsort(-c[ids], kind="stable")]  # most used first, ties by id
        heights = c[ids]
        note, xlabel = f"{summary}; showing used ids only, sorted by count", "rank (used ids, by count)"

    fig = _new_figure(min(4.0 + 0.12 * max(len(ids), 1), 16.0), 3.8)
    ax = fig.subplots()
    x = np.arange(len(ids))
    ax.bar(x, heights, width=0.85 if len(ids) <= 200 else 1.0, color="tab:blue")
    if len(ids) <= MAX_ALL_IDS:
        ax.set_xticks(x)
        ax.set_xticklabels([str(i) for i in ids], rotation=90 if len(ids) > 16 else 0, fontsize=7)
    ax.set_xlim(-0.6, max(len(ids), 1) - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(f"{title}\n({note})" if title else f"action-id usage ({note})", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------- code x action


def plot_confusion(
    path: str | Path,
    matrix: Any,
    code_labels: Sequence[str] | None = None,
    true_labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Heatmap of counts: rows = action ids (codes), columns = true actions.

    `matrix`: `[num_codes, num_actions]` counts (e.g. `metrics.confusion_matrix`).
    `code_labels` / `true_labels` name the rows / columns (default: their indices).
    With more than `MAX_ALL_IDS` codes, only codes that occur (non-zero rows) are
    drawn and the title says so; row tick labels are dropped if still too many.
    A code that means one action shows up as a row with a single bright cell.
    """
    m = to_numpy(matrix)
    if m.ndim != 2:
        raise ValueError(f"matrix must be [num_codes, num_actions], got shape {m.shape}")
    n_codes, n_actions = m.shape
    rows_label = list(code_labels) if code_labels is not None else [str(i) for i in range(n_codes)]
    cols_label = list(true_labels) if true_labels is not None else [str(j) for j in range(n_actions)]
    if len(rows_label) != n_codes or len(cols_label) != n_actions:
        raise ValueError("code_labels / true_labels must match the matrix shape")

    rows = np.arange(n_codes)
    note = ""
    if n_codes > MAX_ALL_IDS:
        rows = np.flatnonzero(m.sum(axis=1) > 0)
        note = f"showing the {rows.size} of {n_codes} codes that occur"
    shown = m[rows]  # (n_rows_shown, num_actions)

    height = min(2.0 + 0.18 * max(rows.size, 1), 20.0)
    width = min(3.0 + 0.45 * n_actions, 16.0)
    fig = _new_figure(width, height)
    ax = fig.subplots()
    im = ax.imshow(shown if shown.size else np.zeros((1, n_actions)), aspect="auto", cmap="magma",
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="count")
    ax.set_xlabel("true action")
    ax.set_ylabel("action id (code)")
    ax.set_xticks(np.arange(n_actions))
    ax.set_xticklabels(cols_label, rotation=90 if n_actions > 12 else 0, fontsize=7)
    if rows.size <= MAX_ALL_IDS:
        ax.set_yticks(np.arange(rows.size))
        ax.set_yticklabels([rows_label[r] for r in rows], fontsize=7)
    else:
        ax.set_yticks([])
    heading = title or "action id x true action"
    ax.set_title(f"{heading}\n({note})" if note else heading, fontsize=10)
    return _save(fig, path)
