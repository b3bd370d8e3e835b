"""The opt-in label head: off by default, labels only from a seeded few train files (never val or
test), windows labelled as evaluation reads them, a head that steers the encoder and never
changes a prediction."""

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
from lam.train.labels import labelled_files, resolve_label_classes, window_labels


def test_no_labels_by_default(tiny_data):
    cfg = RunConfig()
    assert cfg.train.label_fraction == 0 and cfg.model.label_classes == 0
    assert LatentActionModel(small_model_config()).label_head is None
    assert "label_loss" not in LatentActionModel(small_model_config()).metric_names
    assert labelled_files(load_manifest(tiny_data / "manifest.json"), 0.0, seed=0) == []


def test_labelled_files_are_a_seeded_few_of_the_train_split_only(tmp_path):
    from lam.data.manifest import create_manifest
    from lam.data.synth import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, files=10, chunks=2, seed=0)
    manifest = create_manifest(tmp_path, 0.6, 0.2, 0.2, seed=0)
    train = set(manifest.splits["train"])
    for fraction, count in ((0.01, 1), (0.34, 2), (0.5, 3), (1.0, 6)):
        chosen = labelled_files(manifest, fraction, seed=7)
        assert len(chosen) == count and set(chosen) <= train, (fraction, chosen)
        assert chosen == labelled_files(manifest, fraction, seed=7)  # the seed decides
    assert len({tuple(labelled_files(manifest, 0.34, seed=s)) for s in range(8)}) > 1  # other seeds, other files
    # files without true actions cannot lend them
    for rel in manifest.files:
        manifest.files[rel]["has_actions"] = False
    with pytest.raises(UserError, match="no train file .* has true actions"):
        labelled_files(manifest, 0.5, seed=0)


def test_window_labels_are_the_actions_evaluation_scores(tiny_data):
    manifest = load_manifest(tiny_data / "manifest.json")
    a, b = manifest.splits["train"][:2]
    labels = window_labels([a, b, a], [0, 4, 6], 4, frozenset({a}), tiny_data)
    actions = true_actions(tiny_data / a)
    assert labels.shape == (3, 3) and labels.dtype == np.int64
    assert labels[0].tolist() == actions[1:4].tolist() and labels[2].tolist() == actions[7:10].tolist()
    assert labels[1].tolist() == [-1, -1, -1]  # not a labelled file


def test_the_run_config_gets_the_number_of_classes_from_the_labelled_files(tiny_data, tmp_path):
    manifest = load_manifest(tiny_data / "manifest.json")
    cfg = tiny_config(tiny_data, tmp_path, label_fraction=0.5)
    files = resolve_label_classes(cfg, manifest)
    assert files and cfg.model.label_classes == 1 + max(int(true_actions(tiny_data / f).max()) for f in files)


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
    assert model.label_head.weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None) > 0
