"""Evaluation figures: each writes a valid, readable PNG of a sensible size, headless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from lam.eval.figures import DPI, plot_code_histogram, plot_confusion, plot_predictions  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> np.ndarray:
    """Check the PNG signature, then read it back with matplotlib: (H, W, channels)."""
    import matplotlib.image

    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


def test_plot_predictions(tmp_path):
    rng = np.random.default_rng(0)
    s, c, h, w = 3, 4, 8, 8
    target = rng.standard_normal((s, c, h, w)).astype(np.float32)
    pred = target + 0.1 * rng.standard_normal((s, c, h, w)).astype(np.float32)
    context = torch.from_numpy(target).roll(1, dims=0).to(torch.bfloat16)  # tensors accepted too
    out = plot_predictions(tmp_path / "sub" / "pred.png", context, pred, target,
                           channels=(0, 2, 9), max_samples=2, title="tiny")
    assert out == tmp_path / "sub" / "pred.png"
    img = read_png(out)
    # 2 samples x 2 valid channels = 4 rows of ~1.9 in, 3 columns of ~2 in
    assert img.shape[0] >= 4 * 1.5 * DPI and img.shape[1] >= 3 * 1.5 * DPI


def test_plot_predictions_rejects_shape_mismatch(tmp_path):
    a = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError):
        plot_predictions(tmp_path / "x.png", a, a, np.zeros((2, 3, 4, 5)))


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
