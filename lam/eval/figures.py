"""PNG figures for evaluating a latent action model: what changed, the action atlas, id usage, id x action.

    from lam.eval.figures import plot_changes, plot_action_atlas, plot_code_histogram, plot_confusion
    plot_changes("out/changes.png", context, predicted, target)        # each [S, C, H, W]
    plot_action_atlas("out/atlas.png", changes, target_change, labels) # [S, A, H, W], [S, H, W]
    plot_code_histogram("out/codes.png", counts)                       # [num_ids]
    plot_confusion("out/confusion.png", matrix, true_labels=names)     # [num_codes, num_actions]

Changes are what a latent action should explain: frame t minus frame t-1, drawn on a
symmetric, diverging colour scale centred at 0 (blue: decrease, white: none, red: increase),
so "nothing changed" looks the same in every panel.

Rendering is headless: figures are built with matplotlib's object-oriented API
(`matplotlib.figure.Figure` drawn by the Agg canvas), never through `pyplot`, so no
window opens, no global pyplot state is touched (safe in Ray workers and threads),
and a figure is freed as soon as it is saved. The saved PNG is exactly the figure
size times `DPI` (no tight bounding box), so its pixel size is known in advance.

Every function creates the parent directories, writes the PNG, closes the figure and
returns the `Path` written. Inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
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


# ----------------------------------------------------------------------------- what changed

CHANGE_CMAP = "RdBu_r"  # diverging: 0 is white, the sign is the hue


def _symmetric_limit(*arrays: np.ndarray) -> float:
    """The largest |value| over the arrays (at least a tiny number, so an all-zero panel still draws)."""
    return max(max(float(np.abs(a).max()) for a in arrays), 1e-12)


def _suptitle(fig: Any, text: str) -> None:
    """A figure title wrapped to the figure's width (constrained layout gives up on a title wider than the figure)."""
    chars = max(20, int(fig.get_figwidth() * 12))  # about 12 characters per inch at 10 pt
    fig.suptitle(textwrap.fill(text, chars), fontsize=10)


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def change_figure_size(n_samples: int, n_channels: int) -> tuple[float, float]:
    """(width, height) in inches of `plot_changes` (its title and colour bar included)."""
    return 2 * n_channels * 1.6 + 1.4, n_samples * 1.75 + 0.9


def plot_changes(
    path: str | Path,
    context: Any,
    predicted: Any,
    target: Any,
    channels: Sequence[int] = (0, 1, 2),
    max_samples: int = 4,
    title: str = "",
    sample_labels: Sequence[str] | None = None,
) -> Path:
    """What changed from frame t-1 to frame t, and what the model predicted would: side by side.

    `context` (frame t-1), `predicted` and `target` (frame t): `[S, C, H, W]` latent
    frames. One row per sample; per channel two columns, "target change" (target -
    context) and "predicted change" (predicted - context). Each pair has one symmetric
    colour scale centred at 0, written under it ("±0.31"), so a pair compares directly
    and a small change is still visible; the colour bar reads in units of that scale.
    Channels beyond `C` are skipped. `sample_labels` name the samples (default: "sample i").
    """
    ctx, pred, tgt = (to_numpy(a).astype(np.float32, copy=False) for a in (context, predicted, target))
    if not (ctx.shape == pred.shape == tgt.shape) or ctx.ndim != 4:
        raise ValueError(f"expected three [S, C, H, W] arrays of one shape, got {ctx.shape}, {pred.shape}, {tgt.shape}")
    n_samples = min(max_samples, ctx.shape[0])
    chans = [c for c in channels if 0 <= c < ctx.shape[1]]
    if n_samples == 0 or not chans:
        raise ValueError("nothing to plot: no samples or no valid channels")
    true_change = tgt[:n_samples] - ctx[:n_samples]  # (S', C, H, W)
    pred_change = pred[:n_samples] - ctx[:n_samples]

    fig = _new_figure(*change_figure_size(n_samples, len(chans)))
    axes = fig.subplots(n_samples, 2 * len(chans), squeeze=False)  # (samples, 2 * channels)
    for s in range(n_samples):
        for ci, c in enumerate(chans):
            lim = _symmetric_limit(true_change[s, c], pred_change[s, c])
            for k, (heading, arr) in enumerate(((f"channel {c}: target change", true_change), ("predicted change", pred_change))):
                ax = axes[s, 2 * ci + k]
                ax.imshow(arr[s, c] / lim, cmap=CHANGE_CMAP, vmin=-1, vmax=1, interpolation="nearest")
                _bare(ax)
                if s == 0:
                    ax.set_title(heading, fontsize=8)
                if k == 0:
                    ax.set_xlabel(f"scale ±{lim:.3g}", fontsize=7)
        axes[s, 0].set_ylabel(sample_labels[s] if sample_labels is not None else f"sample {s}", fontsize=8)
    bar = fig.colorbar(ScalarMappable(Normalize(-1, 1), CHANGE_CMAP), ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
    bar.set_ticks([-1, 0, 1], labels=["-scale", "0", "+scale"])
    _suptitle(fig, title or "target change (t - (t-1)) and predicted change")
    return _save(fig, path)


# ----------------------------------------------------------------------------- action atlas

ATLAS_MAX_IDS = 16  # more columns than this are unreadable; the most used ids are shown


def atlas_figure_size(n_contexts: int, n_columns: int) -> tuple[float, float]:
    """(width, height) in inches of `plot_action_atlas` with `n_columns` panels per row (its title included)."""
    return 1.5 * n_columns + 0.8, 1.6 * n_contexts + 0.6


def plot_action_atlas(
    path: str | Path,
    changes: Any,
    target_change: Any | None = None,
    action_labels: Sequence[str] | None = None,
    context_labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """For a few contexts, the change the model predicts under each action id: what each id does.

    `changes`: `[S, A, H, W]`, the predicted change (prediction - frame t-1, one channel)
    from context s under action a. `target_change`: `[S, H, W]`, what really happened,
    drawn in a first column (optional). `action_labels` name the A columns (e.g.
    "id 17 (n=230)"), `context_labels` the rows. One symmetric colour scale centred at 0
    per row, so the ids of one context compare directly. At most `ATLAS_MAX_IDS` columns
    of actions are drawn (the first ones: pass the most used first).
    """
    ch = to_numpy(changes).astype(np.float32, copy=False)
    if ch.ndim != 4 or ch.shape[0] == 0 or ch.shape[1] == 0:
        raise ValueError(f"changes must be a non-empty [S, A, H, W] array, got shape {ch.shape}")
    n_ids = min(ch.shape[1], ATLAS_MAX_IDS)
    ch = ch[:, :n_ids]
    tc = None if target_change is None else to_numpy(target_change).astype(np.float32, copy=False)
    if tc is not None and tc.shape != (ch.shape[0], *ch.shape[2:]):
        raise ValueError(f"target_change must be [S, H, W] = {[ch.shape[0], *ch.shape[2:]]}, got {list(tc.shape)}")
    labels = list(action_labels)[:n_ids] if action_labels is not None else [f"id {i}" for i in range(n_ids)]
    if len(labels) != n_ids:
        raise ValueError("action_labels must name every action column")

    n_ctx = ch.shape[0]
    n_cols = n_ids + (tc is not None)
    fig = _new_figure(*atlas_figure_size(n_ctx, n_cols))
    axes = fig.subplots(n_ctx, n_cols, squeeze=False)  # (contexts, columns)
    for s in range(n_ctx):
        panels = ([("target change", tc[s])] if tc is not None else []) + [(labels[a], ch[s, a]) for a in range(n_ids)]
        lim = _symmetric_limit(*(p for _, p in panels))
        for col, (heading, arr) in enumerate(panels):
            ax = axes[s, col]
            im = ax.imshow(arr, cmap=CHANGE_CMAP, vmin=-lim, vmax=lim, interpolation="nearest")
            _bare(ax)
            if s == 0:
                ax.set_title(heading, fontsize=8)
            if col == 0:
                ax.set_ylabel(context_labels[s] if context_labels is not None else f"context {s}", fontsize=8)
        fig.colorbar(im, ax=axes[s, :].tolist(), fraction=0.02, pad=0.01)
    _suptitle(fig, title or "predicted change under each action id")
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
