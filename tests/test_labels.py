"""The opt-in label head: off by default, labels only from a seeded few train transitions spread
over every train file (never val or test; the label-budget ceiling's own), windows labelled as
evaluation reads them, a head that steers the encoder and never changes a prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import small_model_config, tiny_config

from lam.config import RunConfig
from lam.data.h5 import true_actions
from lam.data.manifest import load_manifest
from lam.errors import UserError
from lam.model import LatentActionModel
from lam.train.labels import label_budget, labelled_transitions, resolve_label_classes, window_labels


def test_no_labels_by_default(tiny_data):
    cfg = RunConfig()
    assert cfg.train.label_fraction == 0 and cfg.model.label_classes == 0
    assert "label" not in LatentActionModel(small_model_config()).optional_terms
    assert "label_loss" not in LatentActionModel(small_model_config()).metric_names
    assert labelled_transitions(load_manifest(tiny_data / "manifest.json"), 0.0, seed=0) == {}


def test_a_label_budget_is_spread_over_every_train_file():
    files = np.repeat(np.arange(30), 95)  # 30 files of 95 transitions
    for fraction, expected in ((0.01, 28), (0.025, 71), (0.10, 285)):
        chosen = label_budget(files, fraction, seed=0)
        assert chosen.size == expected and np.unique(chosen).size == expected
        per_file = np.bincount(files[chosen], minlength=30)
        assert per_file.max() - per_file.min() <= 1  # as even as the count allows
        if expected >= 30:
            assert per_file.min() >= 1  # every file gives labels
    np.testing.assert_array_equal(label_budget(files, 0.025, seed=0), label_budget(files, 0.025, seed=0))
    assert not np.array_equal(label_budget(files, 0.025, seed=0), label_budget(files, 0.025, seed=1))


def test_labelled_transitions_are_a_seeded_few_of_every_train_file_only(tmp_path):
    from lam.data.manifest import create_manifest
    from lam.data.synth import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, files=10, chunks=8, seed=0)  # 16 latent frames, 15 transitions a file
    manifest = create_manifest(tmp_path, 0.6, 0.2, 0.2, seed=0)
    train = manifest.splits["train"]
    for fraction, count in ((0.01, 1), (0.1, 9), (0.5, 45), (1.0, 90)):
        chosen = labelled_transitions(manifest, fraction, seed=7)
        assert set(chosen) <= set(train) and sum(t.size for t in chosen.values()) == count, (fraction, chosen)
        assert all(t.min() >= 1 and t.max() <= 15 and np.all(np.diff(t) > 0) for t in chosen.values())
        if count >= len(train):
            assert set(chosen) == set(train)  # a few labels from every video
        again = labelled_transitions(manifest, fraction, seed=7)  # the seed decides
        assert again.keys() == chosen.keys() and all(np.array_equal(again[k], chosen[k]) for k in chosen)
    draws = {tuple(np.concatenate(list(labelled_transitions(manifest, 0.1, seed=s).values()))) for s in range(4)}
    assert len(draws) > 1  # other seeds, other transitions
    # files without true actions cannot lend them
    for rel in manifest.files:
        manifest.files[rel]["has_actions"] = False
    with pytest.raises(UserError, match="no train file .* has true actions"):
        labelled_transitions(manifest, 0.5, seed=0)


def test_the_label_head_sees_the_transitions_of_the_label_budget_ceiling(tmp_path):
    """A run with --label_fraction F and seed s is compared with the ceiling trained on the same labels."""
    from bench.quality.idm import transitions
    from lam.data.manifest import create_manifest
    from lam.data.synth import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, files=8, chunks=4, seed=0)
    manifest = create_manifest(tmp_path, 0.5, 0.25, 0.25, seed=0)
    _, _, files = transitions(manifest, "train")
    for fraction, seed in ((0.025, 0), (0.1, 3)):
        ceiling = label_budget(files, fraction, seed)  # indices into the split's transitions, as bench.quality.idm trains on
        chosen = labelled_transitions(manifest, fraction, seed)
        train = manifest.split_files("train")
        per_file = [(train.index(rel), t) for rel, ts in chosen.items() for t in ts]
        first = {i: int(np.flatnonzero(files == i)[0]) for i in np.unique(files)}
        assert sorted(first[i] + t - 1 for i, t in per_file) == ceiling.tolist()


def test_window_labels_are_the_actions_evaluation_scores(tiny_data):
    manifest = load_manifest(tiny_data / "manifest.json")
    a, b = manifest.splits["train"][:2]
    labels = window_labels([a, b, a], [0, 4, 6], 4, {a: np.array([1, 2, 3, 7, 9])}, tiny_data)
    actions = true_actions(tiny_data / a)
    assert labels.shape == (3, 3) and labels.dtype == np.int64
    assert labels[0].tolist() == actions[1:4].tolist()  # frames 1..3, all labelled
    assert labels[2].tolist() == [actions[7], -1, actions[9]]  # frame 8 is not a labelled transition
    assert labels[1].tolist() == [-1, -1, -1]  # no labelled transition in that file


def test_the_run_config_gets_the_number_of_classes_from_the_labelled_files(tiny_data, tmp_path):
    manifest = load_manifest(tiny_data / "manifest.json")
    cfg = tiny_config(tiny_data, tmp_path, label_fraction=0.5)
    labelled = resolve_label_classes(cfg, manifest)
    assert labelled and cfg.model.label_classes == 1 + max(int(true_actions(tiny_data / f).max()) for f in labelled)


@pytest.mark.parametrize("quantizer", ["vq", "fsq", "gaussian"])
def test_the_label_head_steers_the_encoder_and_never_changes_a_prediction(quantizer):
    torch.manual_seed(0)
    model = LatentActionModel(small_model_config(quantizer=quantizer, label_classes=5, label_weight=1.0))
    x = torch.randn(4, 5, 4, 16, 16)
    labels = torch.randint(0, 5, (4, 4))
    labels[:2] = -1  # half the windows unlabelled

    def run(with_labels: bool):
        torch.manual_seed(1)  # the same noise (gaussian) both times
        model.zero_grad()
        out = model(x, labels if with_labels else None)
        return out

    plain, labelled = run(False), run(True)
    assert torch.equal(plain.predictions, labelled.predictions) and torch.equal(plain.indices, labelled.indices)
    assert float(plain.metrics["label_loss"]) == 0.0 and float(labelled.metrics["label_loss"]) > 0
    assert torch.allclose(labelled.loss - plain.loss, labelled.metrics["label_loss"])
    # the label term's gradient reaches the encoder (and the head)
    (labelled.loss - plain.loss).backward()
    assert model.optional_terms["label"].head.weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None) > 0


def test_the_label_schedule_scales_the_label_term_only():
    from lam.train.schedule import label_multiplier

    total = 101
    assert all(label_multiplier("constant", s, total) == 1.0 for s in range(total))
    decay = [label_multiplier("decay", s, total) for s in range(total)]
    assert decay[0] == 1.0 and decay[-1] < 1e-9 and all(a >= b for a, b in zip(decay, decay[1:]))
    warmup = [label_multiplier("warmup", s, total) for s in range(total)]
    assert warmup[0] == 0.0 and warmup[50] == 1.0 and warmup[-1] == 1.0 and all(a <= b for a, b in zip(warmup, warmup[1:]))
    with pytest.raises(ValueError, match="unknown label schedule"):
        label_multiplier("sometimes", 0, total)
    with pytest.raises(UserError, match="label_schedule must be one of constant, decay, warmup"):
        RunConfig.from_dict({"data_dir": "d", "label_schedule": "sometimes"}).validate()

    torch.manual_seed(0)
    model = LatentActionModel(small_model_config(quantizer="gaussian", label_classes=5, label_weight=0.5))
    x, labels = torch.randn(2, 3, 4, 16, 16), torch.randint(0, 5, (2, 2))

    def loss(scale):
        torch.manual_seed(1)
        return model(x, labels, None if scale is None else torch.tensor(scale))

    full, quarter, none = loss(None), loss(0.25), loss(0.0)
    assert torch.allclose(full.loss - none.loss, 0.5 * full.metrics["label_loss"])
    assert torch.allclose(quarter.loss - none.loss, 0.25 * 0.5 * full.metrics["label_loss"])
    assert torch.equal(full.metrics["label_loss"], none.metrics["label_loss"])  # reported unscaled
