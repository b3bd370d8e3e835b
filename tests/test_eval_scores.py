"""Ground-truth scores on hand-made inputs with known answers: leakage probes, groups, k-means ids,
bootstrap errors, collapse warnings, and the every-transition tiling of a split."""

from __future__ import annotations

import numpy as np
import pytest

from lam.eval.metrics import bootstrap_std
from lam.eval.probes import kmeans_ids, kmeans_k
from lam.eval.report import collapse_warnings
from lam.eval.scores import group_scores, label_scores

N_FILES, PER_FILE, N_ACTIONS = 8, 60, 4


def hand_made(seed: int = 0):
    """Labels, their file, and noise features: 8 files of 60 transitions, 4 actions."""
    rng = np.random.default_rng(seed)
    n = N_FILES * PER_FILE
    labels = rng.integers(0, N_ACTIONS, n)
    files = np.repeat(np.arange(N_FILES), PER_FILE)
    return rng, labels, files, rng.standard_normal((n, 16))


def one_hot(labels: np.ndarray, rng, scale: float = 6.0) -> np.ndarray:
    """Features that tell the label: a scaled one-hot plus unit noise, `[N, 16]`."""
    x = rng.standard_normal((labels.size, 16))
    x[np.arange(labels.size), labels] += scale
    return x


# ----------------------------------------------------------------------------- leakage control


def test_a_label_written_in_frame_t_is_read_by_the_frame_t_probe():
    rng, labels, files, noise = hand_made()
    random_ids = rng.integers(0, 6, labels.size)  # codes that mean nothing
    s = label_scores(random_ids, labels, files, frames_prev=noise, frames_next=one_hot(labels, rng), bootstrap=0)
    assert s["probe_split"] == "cross-fitted over 5 folds by file" and s["scored_transitions"] == labels.size
    assert s["frame_t_probe_accuracy"] > 0.95
    assert abs(s["frame_t_minus_1_probe_accuracy"] - 1 / N_ACTIONS) < 0.12
    assert s["best_frame_probe"] == "frame_t_probe"
    assert s["best_frame_probe_accuracy"] == s["frame_t_probe_accuracy"]
    # the codes mean nothing, so their probe loses to frame t alone by about 1 - chance
    assert s["code_map_margin"] == pytest.approx(s["code_map_accuracy"] - s["frame_t_probe_accuracy"])
    assert s["code_map_margin"] < -0.5


def test_labels_independent_of_the_frames_leave_frame_probes_at_chance_and_codes_ahead():
    rng, labels, files, noise = hand_made(1)
    other = rng.standard_normal(noise.shape)
    s = label_scores(labels, labels, files, frames_prev=noise, frames_next=other, bootstrap=0)  # ids = the true actions
    for key in ("frame_t_minus_1_probe_accuracy", "frame_t_probe_accuracy"):
        assert abs(s[key] - 1 / N_ACTIONS) < 0.12, key
    assert s["code_map_accuracy"] == 1.0 and s["nmi"] == pytest.approx(1.0)
    assert s["code_map_margin"] > 0.5


def test_linear_probe_on_vectors_that_encode_the_action():
    rng, labels, files, _ = hand_made(2)
    s = label_scores(np.zeros_like(labels), labels, files, z_pre=one_hot(labels, rng), bootstrap=0)
    assert s["linear_probe_accuracy"] > 0.95 and s["action_ids_used"] == 1
    assert s["code_map_accuracy"] == pytest.approx(s["chance_accuracy"])  # one id: its map is the majority action
    assert "best_frame_probe" not in s and "code_map_margin" not in s  # no frames, no margin


# ----------------------------------------------------------------------------- groups


def test_group_scores_two_groups_with_known_nmi():
    _, labels, files, _ = hand_made(3)
    groups = np.where(files < 4, "game_a", "game_b")
    ids = np.where(groups == "game_a", (labels + 1) % N_ACTIONS, 7)  # a: a renaming of the actions; b: one id
    out = group_scores(groups, ids, labels, files, bootstrap=0)
    assert set(out) == {"game_a", "game_b"}
    a, b = out["game_a"], out["game_b"]
    assert a["nmi"] == pytest.approx(1.0) and a["code_map_accuracy"] == 1.0 and a["action_ids_used"] == N_ACTIONS
    assert b["nmi"] == 0.0 and b["action_ids_used"] == 1
    assert a["files"] == b["files"] == 4 and a["transitions"] == b["transitions"] == 4 * PER_FILE
    assert np.asarray(b["confusion"])[7].sum() == 4 * PER_FILE
    pooled = label_scores(ids, labels, files, bootstrap=0)["nmi"]
    assert 0.0 < pooled < 1.0


def test_group_scores_without_labels_count_ids():
    out = group_scores(np.array(["x", "x", "y"]), np.array([1, 2, 2]), files=np.array([0, 0, 1]))
    assert out == {"x": {"files": 1, "transitions": 2, "action_ids_used": 2},
                   "y": {"files": 1, "transitions": 1, "action_ids_used": 1}}


# ----------------------------------------------------------------------------- k-means ids


def test_every_probe_scores_every_transition_once_on_the_same_folds():
    """Cross-fitting: each probe's accuracy is the mean over all transitions, and two evaluations of the
    same files (a model and its floor) score the same transitions with the same fit parts."""
    rng, labels, files, noise = hand_made(3)
    ids = labels.copy()
    ids[rng.random(labels.size) < 0.3] = 5  # a code that means nothing on 30% of transitions
    s = label_scores(ids, labels, files, frames_prev=noise, frames_next=noise, bootstrap=0)
    assert s["scored_transitions"] == s["transitions"] == labels.size and s["probe_folds"] == 5
    # by hand: the code 5 maps to the majority action of the other folds; the rest are right
    from lam.eval.metrics import folds_by_group, majority_label

    folds = folds_by_group(files)
    expected = np.zeros(labels.size, bool)
    for j in range(5):
        held, fit = folds == j, folds != j
        code5 = majority_label(labels[fit & (ids == 5)])
        expected[held] = np.where(ids[held] == 5, labels[held] == code5, True)
    assert s["code_map_accuracy"] == pytest.approx(expected.mean())
    # the same files in another order: the same folds, the same scores
    order = rng.permutation(labels.size)
    again = label_scores(ids[order], labels[order], files[order], frames_prev=noise[order], frames_next=noise[order], bootstrap=0)
    for key in ("code_map_accuracy", "chance_accuracy", "frame_t_probe_accuracy"):
        assert again[key] == pytest.approx(s[key]), key


def test_kmeans_k_rule():
    assert kmeans_k(1728, 45) == 4  # few fit vectors: about 10 per cluster
    assert kmeans_k(5, 10_000) == 5  # never more clusters than the model has ids
    assert kmeans_k(64, 8) == 2  # at least 2


def test_kmeans_ids_recover_well_separated_clusters():
    rng = np.random.default_rng(4)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    labels = rng.integers(0, 3, 300)
    z = centers[labels] + rng.standard_normal((300, 2))
    ids = kmeans_ids(z[:150], z, k=3, seed=0)
    assert np.array_equal(ids, kmeans_ids(z[:150], z, k=3, seed=0))  # deterministic
    assert len(set(zip(ids.tolist(), labels.tolist()))) == 3  # each cluster is one blob

    files = np.repeat(np.arange(6), 50)
    s = label_scores(np.zeros(300, dtype=np.int64), labels, files, z_pre=z, num_ids=3, bootstrap=0)
    km = s["kmeans"]
    assert km["k"] == 3 and km["action_ids_used"] == 3
    assert km["nmi"] == pytest.approx(1.0) and km["code_map_accuracy"] == 1.0


def test_kmeans_is_fitted_on_the_fit_part_only():
    fit = np.array([[0.0], [0.1], [10.0], [10.1]])
    ids = kmeans_ids(fit, np.array([[100.0], [-100.0]]), k=2, seed=0)
    assert set(ids.tolist()) <= {0, 1} and ids[0] != ids[1]  # far points join the nearest fitted cluster


# ----------------------------------------------------------------------------- sampling error


def test_bootstrap_std_is_zero_on_a_constant_input_and_positive_otherwise():
    files = np.repeat(np.arange(5), 10)
    assert bootstrap_std(lambda i: float(np.ones(50)[i].mean()), files, resamples=50) == 0.0
    values = files.astype(float)  # files differ
    std = bootstrap_std(lambda i: float(values[i].mean()), files, resamples=50, seed=1)
    assert std > 0 and std == bootstrap_std(lambda i: float(values[i].mean()), files, resamples=50, seed=1)
    assert bootstrap_std(lambda i: float(values[i].mean()), files, resamples=0) == 0.0


def test_label_scores_report_the_bootstrap_std():
    rng, labels, files, noise = hand_made(5)
    s = label_scores(labels, labels, files, bootstrap=30)
    assert s["nmi_std"] == 0.0 and s["code_map_accuracy_std"] == 0.0  # perfect on every resample
    assert s["bootstrap"] == {"resamples": 30, "unit": "file", "seed": 0}
    noisy = label_scores(rng.integers(0, 6, labels.size), labels, files, frames_next=noise, bootstrap=30)
    assert noisy["nmi_std"] > 0 and noisy["code_map_accuracy_std"] > 0 and noisy["code_map_margin_std"] > 0
    one_file = label_scores(labels[:40], labels[:40], np.zeros(40), bootstrap=10)
    assert one_file["bootstrap"]["unit"] == "transition" and one_file["probe_split"] == "cross-fitted over 5 folds by transition (one file)"


# ----------------------------------------------------------------------------- collapse warnings


@pytest.mark.parametrize("used,num_ids,delta,expected", [
    (1, 64, 3.0, ["all 500 transitions share one action id"]),
    (2, 64, 3.0, ["only 2 action ids are used"]),
    (2, 2, 3.0, []),  # a model of 2 ids that uses both has not collapsed
    (9, 64, 0.02, ["the decoder ignores the actions (delta-t PSNR 0.020 dB"]),
    (9, 64, -0.5, ["the decoder ignores the actions (delta-t PSNR -0.500 dB"]),
    (1, 64, 0.0, ["all 500 transitions share one action id", "the decoder ignores the actions"]),
    (9, 64, 0.5, []),
    (9, 64, float("nan"), []),
])
def test_collapse_warnings(used, num_ids, delta, expected):
    report = {"transitions": 500, "action_ids_used": used, "delta_psnr": delta, "codebook": {"num_action_ids": num_ids}}
    found = collapse_warnings(report)
    assert len(found) == len(expected)
    assert all(line.startswith(prefix) for line, prefix in zip(found, expected))


# ----------------------------------------------------------------------------- which group a file is in


def test_file_groups_from_a_pattern_or_the_manifest():
    from pathlib import Path

    from lam.data.manifest import Manifest
    from lam.errors import UserError
    from lam.eval.evaluate import file_groups

    files = ["doom/e1.h5", "doom/e2.h5", "pong/a.h5", "loose.h5"]
    manifest = Manifest(Path("."), {}, {"doom/e1.h5": {"group": "doom"}, "pong/a.h5": {"group": "pong"}})
    assert file_groups(manifest, files, r"^([^/]+)/") == (["doom", "doom", "pong", "other"], r"--group_by ^([^/]+)/")
    assert file_groups(manifest, files, r"doom")[0] == ["doom", "doom", "other", "other"]  # no capture group: the match
    assert file_groups(manifest, files) == (["doom", "other", "pong", "other"], "the manifest's per-file 'group'")
    assert file_groups(Manifest(Path("."), {}, {}), files) == (None, None)
    with pytest.raises(UserError, match="not a regular expression"):
        file_groups(manifest, files, "(unclosed")
