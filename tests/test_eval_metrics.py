"""Evaluation metrics on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lam.eval.metrics import (
    code_usage,
    confusion_matrix,
    cross_fit,
    folds_by_group,
    majority_chance,
    normalized_mutual_information,
    psnr_from_mse,
    split_by_group,
    split_fit_eval,
)
from lam.eval.probes import linear_probe_accuracy, mapping_probe_accuracy

# ----------------------------------------------------------------------------- PSNR


def test_psnr_from_mse():
    assert psnr_from_mse(0.01, 1.0) == pytest.approx(20.0)
    assert psnr_from_mse(np.float32(4.0), 2.0) == pytest.approx(0.0)
    assert psnr_from_mse(0.0, 1.0) == math.inf
    for mse, peak in [(0.1, 0.0), (-1.0, 1.0)]:
        with pytest.raises(ValueError):
            psnr_from_mse(mse, peak)


def test_perfect_and_permuted_mapping():
    labels = np.repeat(np.arange(4), 25)
    perm = np.array([2, 0, 3, 1])
    codes = perm[labels]  # a renaming of the labels
    assert normalized_mutual_information(labels, labels) == pytest.approx(1.0)
    assert normalized_mutual_information(codes, labels) == pytest.approx(1.0)
    assert mapping_probe_accuracy(codes, labels, codes, labels) == 1.0


def test_independent_labels_near_zero():
    rng = np.random.default_rng(0)
    n = 20_000
    codes, labels = rng.integers(0, 8, n), rng.integers(0, 4, n)
    assert normalized_mutual_information(codes, labels) < 0.02
    half = n // 2
    acc = mapping_probe_accuracy(codes[:half], labels[:half], codes[half:], labels[half:])
    chance = majority_chance(labels[:half], labels[half:])
    assert abs(acc - chance) < 0.03
    assert chance == pytest.approx(0.25, abs=0.03)


def test_many_to_one_mapping():
    codes = np.tile(np.arange(6), 20)  # 6 codes ...
    labels = codes // 2  # ... each always meaning one of 3 actions
    assert mapping_probe_accuracy(codes, labels, codes, labels) == 1.0
    nmi = normalized_mutual_information(codes, labels)
    assert 0.5 < nmi < 1.0


def test_nmi_matches_hand_computation():
    a = np.array([0, 0, 1, 1])
    b = np.array([0, 0, 0, 1])
    # I = H(b) - H(b|a) = H(1/4) - 1/2 * H(1/2); NMI = 2I / (H(a) + H(b)), scikit-learn's arithmetic normalisation
    h = lambda *p: -sum(x * math.log(x) for x in p)  # noqa: E731
    mi = h(0.25, 0.75) - 0.5 * h(0.5, 0.5)
    expected = 2 * mi / (h(0.5, 0.5) + h(0.25, 0.75))
    assert normalized_mutual_information(a, b) == pytest.approx(expected)
    assert normalized_mutual_information(b, a) == pytest.approx(expected)


def test_nmi_degenerate_cases():
    assert normalized_mutual_information([3, 3, 3], [7, 7, 7]) == 1.0  # both constant
    assert normalized_mutual_information([3, 3, 3], [0, 1, 2]) == 0.0  # one constant
    with pytest.raises(ValueError):
        normalized_mutual_information([], [])
    with pytest.raises(ValueError):
        normalized_mutual_information([0, 1], [0])


def test_mapping_probe_unseen_codes_use_majority():
    codes_fit, labels_fit = np.array([0, 0, 1]), np.array([2, 2, 1])
    # code 5 is unseen: predicted as the fit majority label (2)
    acc = mapping_probe_accuracy(codes_fit, labels_fit, np.array([0, 1, 5, 5]), np.array([2, 1, 2, 0]))
    assert acc == pytest.approx(0.75)


def test_majority_chance():
    assert majority_chance([1, 1, 0], [1, 0, 0, 0]) == pytest.approx(0.25)


def test_linear_probe_separable_and_random():
    rng = np.random.default_rng(0)
    n, d, k = 400, 5, 3
    centers = rng.standard_normal((k, d)) * 6.0
    labels = rng.integers(0, k, n)
    feats = centers[labels] + rng.standard_normal((n, d))  # well separated blobs
    fit, ev = split_fit_eval(n, 0.5, seed=0)
    acc = linear_probe_accuracy(feats[fit], labels[fit], feats[ev], labels[ev], num_classes=k)
    assert acc > 0.97

    noise = rng.standard_normal((n, d))
    acc_rand = linear_probe_accuracy(noise[fit], labels[fit], noise[ev], labels[ev], num_classes=k)
    assert abs(acc_rand - 1 / k) < 0.12


def test_linear_probe_deterministic_and_tensor_input():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(60, 2, 3, generator=g)  # extra dims are flattened
    labels = torch.randint(0, 4, (60,), generator=g)
    a = linear_probe_accuracy(feats[:30], labels[:30], feats[30:], labels[30:], num_classes=4)
    b = linear_probe_accuracy(feats[:30], labels[:30], feats[30:], labels[30:], num_classes=4)
    assert a == b
    with pytest.raises(ValueError):
        linear_probe_accuracy(feats[:30], labels[:30] + 4, feats[30:], labels[30:], num_classes=4)


def test_linear_probe_with_one_action_in_the_fit_part_predicts_it():
    feats = np.arange(12.0).reshape(6, 2)
    assert linear_probe_accuracy(feats[:3], [2, 2, 2], feats[3:], [2, 2, 0]) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- usage, confusion


def test_code_usage_hand_made():
    out = code_usage(np.array([0, 0, 1, 3]), num_ids=5)
    assert out["histogram"] == [2, 1, 0, 1, 0]
    assert out["usage"] == pytest.approx(3 / 5)
    assert out["num_used"] == 3
    p = np.array([0.5, 0.25, 0.25])
    assert out["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert code_usage([2, 2, 2], 4)["perplexity"] == pytest.approx(1.0)
    assert code_usage(np.arange(4), 4)["perplexity"] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        code_usage([4], 4)


def test_confusion_matrix():
    m = confusion_matrix([0, 0, 2, 2, 2], [1, 1, 0, 1, 0], num_codes=3, num_labels=2)
    np.testing.assert_array_equal(m, [[0, 2], [0, 0], [2, 1]])
    assert m.dtype == np.int64


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize("n,frac", [(10, 0.5), (7, 0.3), (2, 0.9), (1, 0.5)])
def test_split_fit_eval(n, frac):
    fit, ev = split_fit_eval(n, frac, seed=3)
    assert np.intersect1d(fit, ev).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([fit, ev])), np.arange(n))
    fit2, ev2 = split_fit_eval(n, frac, seed=3)
    np.testing.assert_array_equal(fit, fit2)
    np.testing.assert_array_equal(ev, ev2)
    if n >= 2:
        assert fit.size >= 1 and ev.size >= 1


@pytest.mark.parametrize("n_groups,n_folds", [(23, 5), (3, 5), (1, 5), (10, 2)])
def test_folds_by_group_keep_groups_whole_and_cover_every_sample(n_groups, n_folds):
    groups = np.repeat([f"f{i:02d}.h5" for i in range(n_groups)], 7)
    folds = folds_by_group(groups, n_folds, seed=0)
    k = min(n_folds, n_groups) if n_groups > 1 else n_folds
    assert folds.shape == groups.shape and set(folds.tolist()) == set(range(k))
    if n_groups > 1:
        for g in np.unique(groups):
            assert np.unique(folds[groups == g]).size == 1  # a file lies in one fold
        sizes = np.bincount([folds[groups == g][0] for g in np.unique(groups)])
        assert sizes.max() - sizes.min() <= 1  # folds differ by one file at most
        order = np.random.default_rng(1).permutation(groups.size)  # independent of the samples' order
        np.testing.assert_array_equal(folds_by_group(groups[order], n_folds, seed=0), folds[order])
    # cross_fit: each fold predicted from the others, every sample once
    seen = np.zeros(groups.size, int)

    def predict(fit, held):
        assert np.intersect1d(fit, held).size == 0 and fit.size + held.size == groups.size
        seen[held] += 1
        return held

    np.testing.assert_array_equal(cross_fit(predict, folds), np.arange(groups.size))
    assert np.all(seen == 1)


def test_split_by_group_keeps_groups_whole():
    groups = np.array(["b.h5", "a.h5", "c.h5", "a.h5", "d.h5", "b.h5", "c.h5", "e.h5"])
    fit, ev = split_by_group(groups, fit_fraction=0.4, seed=0)
    assert np.intersect1d(fit, ev).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([fit, ev])), np.arange(groups.size))
    assert set(groups[fit]).isdisjoint(groups[ev])
    assert len(set(groups[fit])) == 2  # round(0.4 * 5 groups)

    # deterministic, and independent of sample order
    fit2, _ = split_by_group(groups, fit_fraction=0.4, seed=0)
    np.testing.assert_array_equal(fit, fit2)
    order = np.random.default_rng(1).permutation(groups.size)
    fit3, _ = split_by_group(groups[order], fit_fraction=0.4, seed=0)
    assert set(groups[order][fit3]) == set(groups[fit])
