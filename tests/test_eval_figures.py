"""Evaluation figures: each writes a valid, readable PNG of a sensible size, headless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from lam.eval.figures import (  # noqa: E402
    ATLAS_MAX_IDS,
    DPI,
    atlas_figure_size,
    change_figure_size,
    plot_action_atlas,
    plot_changes,
    plot_code_histogram,
    plot_confusion,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> np.ndarray:
    """Check the PNG signature, then read it back with matplotlib: (H, W, channels)."""
    import matplotlib.image

    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


def pixels(size_in: tuple[float, float]) -> tuple[int, int]:
    """(height, width) in pixels of a figure of (width, height) inches saved at DPI."""
    return round(size_in[1] * DPI), round(size_in[0] * DPI)


def test_plot_changes(tmp_path):
    rng = np.random.default_rng(0)
    s, c, h, w = 3, 4, 8, 8
    target = rng.standard_normal((s, c, h, w)).astype(np.float32)
    pred = target + 0.1 * rng.standard_normal((s, c, h, w)).astype(np.float32)
    context = torch.from_numpy(target).roll(1, dims=0).to(torch.bfloat16)  # tensors accepted too
    out = plot_changes(tmp_path / "sub" / "changes.png", context, pred, target,
                       channels=(0, 2, 9), max_samples=2, title="tiny")
    assert out == tmp_path / "sub" / "changes.png"
    img = read_png(out)
    # 2 samples (rows) x 2 valid channels, each a pair of columns (target change, predicted change)
    assert img.shape[:2] == pixels(change_figure_size(2, 2))


def test_plot_changes_draws_no_change_as_the_middle_of_the_scale(tmp_path):
    """Frames that do not change at all: both panels are the colour map's centre (white), not an extreme."""
    frame = np.ones((1, 1, 6, 6), dtype=np.float32)
    img = read_png(plot_changes(tmp_path / "none.png", frame, frame, frame, channels=(0,)))
    assert img.shape[:2] == pixels(change_figure_size(1, 1))
    assert (img[..., :3] > 0.95).all(axis=-1).mean() > 0.5  # mostly white


def test_plot_changes_rejects_shape_mismatch(tmp_path):
    a = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError):
        plot_changes(tmp_path / "x.png", a, a, np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("n_ids", [3, ATLAS_MAX_IDS + 4], ids=["few-ids", "capped"])
def test_plot_action_atlas(tmp_path, n_ids):
    rng = np.random.default_rng(0)
    changes = rng.standard_normal((2, n_ids, 8, 8))
    target = torch.from_numpy(rng.standard_normal((2, 8, 8)))
    labels = [f"id {i}\n(n={100 - i})" for i in range(n_ids)]
    img = read_png(plot_action_atlas(tmp_path / "atlas.png", changes, target, action_labels=labels,
                                     context_labels=["a", "b"]))
    shown = min(n_ids, ATLAS_MAX_IDS)
    assert img.shape[:2] == pixels(atlas_figure_size(2, shown + 1))  # + the target-change column
    img = read_png(plot_action_atlas(tmp_path / "atlas_no_target.png", changes[:1]))
    assert img.shape[:2] == pixels(atlas_figure_size(1, shown))


def test_plot_action_atlas_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        plot_action_atlas(tmp_path / "x.png", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError):
        plot_action_atlas(tmp_path / "x.png", np.zeros((2, 3, 4, 4)), target_change=np.zeros((2, 4, 5)))


@pytest.mark.parametrize("num_ids,used", [(12, 7), (1728, 150)], ids=["few-ids", "many-ids"])
def test_plot_code_histogram(tmp_path, num_ids, used):
    rng = np.random.default_rng(0)
    counts = np.zeros(num_ids, dtype=np.int64)
    counts[rng.choice(num_ids, used, replace=False)] = rng.integers(1, 100, used)
    img = read_png(plot_code_histogram(tmp_path / "codes.png", counts, title="usage"))
    assert img.shape[0] >= 200 and img.shape[1] >= 300


def test_plot_confusion(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 20, (6, 4))
    img = read_png(plot_confusion(tmp_path / "conf.png", matrix, true_labels=["up", "down", "left", "right"],
                                  title="codes vs actions"))
    assert img.shape[0] >= 200 and img.shape[1] >= 200


def test_plot_confusion_many_codes_shows_only_used(tmp_path):
    matrix = np.zeros((1728, 5), dtype=np.int64)
    matrix[np.arange(0, 1728, 40)] = 3  # 44 codes occur
    img = read_png(plot_confusion(tmp_path / "conf_many.png", torch.from_numpy(matrix)))
    # height follows the 44 shown rows, not all 1,728
    assert 200 <= img.shape[0] <= (2.0 + 0.18 * 44) * DPI + 2
