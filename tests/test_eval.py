"""Evaluation and export on real checkpoints and H5 files."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lam.eval.evaluate import evaluate_checkpoint, evaluate_windows, summarize
from lam.eval.export import export_actions, export_windows
from lam.model import LatentActionModel
from lam.runtime.checkpoint import save_checkpoint
from helpers import tiny_config


@pytest.mark.parametrize("T", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31])
def test_export_windows_tile_every_transition_once(n, T):
    covered = Counter()
    for start, length, first in export_windows(n, T):
        assert 0 <= start and start + length <= n and length <= T
        assert start < first <= start + length - 1
        covered.update(range(first, start + length))
    assert sorted(covered) == list(range(1, n)) and all(c == 1 for c in covered.values())


def write_tiny_checkpoint(data_dir, tmp_path, seed=0):
    cfg = tiny_config(data_dir, tmp_path)
    torch.manual_seed(seed)
    model = LatentActionModel(cfg.model)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, model=model.state_dict(), optimizer={}, scheduler={}, epoch=0, step=0, config=cfg.to_dict())
    return ckpt, cfg, model


@pytest.mark.slow
def test_export_covers_every_transition_of_files_of_different_lengths(ray_session, tmp_path):
    from lam.data.manifest import create_manifest, write_manifest
    from lam.data.synth import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, files=3, chunks=5, seed=1, vary_length=True)  # 6, 8, 10 latent frames
    manifest = create_manifest(data, 1.0, 0.0, 0.0)
    write_manifest(manifest, data / "manifest.json")
    ckpt, cfg, model = write_tiny_checkpoint(data, tmp_path)

    result = export_actions(str(ckpt), str(data), str(tmp_path / "actions.parquet"), batch_size=3, progress=False)
    table = pq.read_table(tmp_path / "actions.parquet").to_pandas()
    assert result["rows"] == len(table) == result["expected_rows"]
    assert list(table.columns) == ["file", "t", "codes", "action_id"]
    for rel, meta in manifest.files.items():
        ts = sorted(table.loc[table.file == rel, "t"])
        assert ts == list(range(1, meta["n_frames"])), rel
    codes = np.stack(table["codes"].to_numpy())
    assert codes.shape[1] == cfg.model.num_codes and codes.min() >= 0 and codes.max() < cfg.model.num_embeddings
    np.testing.assert_array_equal(table["action_id"], model.action_ids(torch.from_numpy(codes)).numpy())


class ShiftWorld(torch.nn.Module):
    """A hand-made 'model' with the LAM's inference API: the action is the horizontal shift
    between frames (0: none, 1: +1, 2: -1), and the decoder applies it."""

    def __init__(self, uses_actions: bool):
        super().__init__()
        self.uses_actions = uses_actions
        self.config = type("C", (), {"num_embeddings": 3, "num_codes": 1})()

    def _shift(self, frame, code):
        return frame if code == 0 else torch.roll(frame, 1 if code == 1 else -1, dims=-1)

    def encode_actions(self, x):
        b, t = x.shape[:2]
        idx = torch.zeros(b, t - 1, 1, dtype=torch.long)
        for i in range(b):
            for s in range(t - 1):
                errs = [float((self._shift(x[i, s], c) - x[i, s + 1]).pow(2).mean()) for c in range(3)]
                idx[i, s, 0] = int(np.argmin(errs))
        return idx, idx.float()[..., None]

    def _next(self, frame, code):
        return self._shift(frame, code) if self.uses_actions else frame

    def decode_with_actions(self, x, idx):
        return torch.stack([torch.stack([self._next(x[i, s], int(idx[i, s, 0])) for s in range(x.shape[1] - 1)]) for i in range(x.shape[0])])

    def rollout(self, x, idx, horizon):
        frames, out = x[:, -1], []
        for h in range(horizon):
            frames = torch.stack([self._next(frames[i], int(idx[i, h, 0])) for i in range(x.shape[0])])
            out.append(frames)
        return torch.stack(out, dim=1)

    def action_ids(self, idx):
        return idx[..., 0]


def shift_batches(n=8, T=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(2):
        base = torch.randn(n, 2, 6, 6, generator=gen)
        codes = torch.randint(0, 3, (n, T - 1), generator=gen)
        frames = [base]
        for s in range(T - 1):
            frames.append(torch.stack([torch.roll(frames[-1][i], [0, 1, -1][int(codes[i, s])], dims=-1) for i in range(n)]))
        yield torch.stack(frames, dim=1), codes.numpy(), np.arange(n) % 2


@pytest.mark.parametrize("uses_actions", [True, False])
def test_delta_psnr_is_zero_when_actions_are_ignored_and_positive_when_used(uses_actions):
    report = summarize(evaluate_windows(ShiftWorld(uses_actions), shift_batches(), seed=0), num_actions=3)
    deltas = [r["delta_psnr"] for r in report["rollout"]]
    if uses_actions:
        assert all(d > 1.0 for d in deltas)
        assert report["ground_truth"]["nmi"] == pytest.approx(1.0)
        assert report["ground_truth"]["code_map_accuracy"] == 1.0
    else:
        assert all(d == pytest.approx(0.0, abs=1e-9) for d in deltas)
        assert report["next_frame"]["mse"] == pytest.approx(report["copy_last_baseline"]["mse"])


@pytest.mark.parametrize("uses_actions", [True, False])
def test_summary_warns_when_the_decoder_ignores_the_actions(uses_actions):
    report = summarize(evaluate_windows(ShiftWorld(uses_actions), shift_batches(), seed=0), num_actions=3, bootstrap=10)
    assert report["action_ids_used"] == 3
    ignored = [w for w in report["warnings"] if w.startswith("the decoder ignores the actions")]
    assert len(ignored) == (0 if uses_actions else 1) and len(report["warnings"]) == len(ignored)


def test_summary_without_features_is_what_the_training_loop_reads():
    acc = evaluate_windows(ShiftWorld(True), shift_batches(), keep_features=False)
    report = summarize(acc, num_actions=3, file_groups=["even", "odd"])
    gt = report["ground_truth"]
    assert report["action_ids_used"] == 3 and gt["nmi"] == pytest.approx(1.0)
    assert "linear_probe_accuracy" not in gt and "frame_t_probe_accuracy" not in gt and "kmeans" not in gt
    assert set(report["groups"]) == {"even", "odd"}  # file ids 0 and 1 of shift_batches
    assert all(g["nmi"] == pytest.approx(1.0) for g in report["groups"].values())


def test_masked_transitions_are_not_scored():
    batches = [(x, labels, files, np.tile([False, True, True, True], (len(x), 1))) for x, labels, files in shift_batches()]
    report = summarize(evaluate_windows(ShiftWorld(True), batches), num_actions=3, bootstrap=0)
    assert report["transitions"] == 2 * 8 * 3 and report["windows"] == 2 * 8
    assert report["ground_truth"]["transitions"] == 2 * 8 * 3


def test_split_batches_score_every_transition_of_every_file_once(tiny_data):
    from lam.data.manifest import load_manifest
    from lam.eval.evaluate import split_batches

    manifest = load_manifest(tiny_data / "manifest.json")
    batches = split_batches(5, manifest, "train", batch_size=3)  # 16 frames: windows at 0, 4, 8 and one moved back to 11
    scored, row = Counter(), 0
    for x, labels, file_ids, counted in batches:
        assert x.shape[1] == 5 and labels.shape == counted.shape == (len(x), 4)
        for f, mask in zip(file_ids, counted.numpy()):
            start = int(batches.windows[row][1])  # the batches keep the windows' order
            scored.update((batches.files[f], start + 1 + j) for j in np.flatnonzero(mask))
            row += 1
    assert sorted(scored) == sorted((rel, t) for rel in manifest.split_files("train") for t in range(1, 16))
    assert set(scored.values()) == {1}


def test_figure_windows_come_from_every_file_before_any_file_twice(tiny_data):
    from lam.data.manifest import load_manifest
    from lam.data.windows import WindowReader
    from lam.eval.evaluate import figure_windows

    manifest = load_manifest(tiny_data / "manifest.json")
    train = manifest.split_files("train")  # 2 files, 4 windows of 5 frames each (at 0, 4, 8, 11)
    x, files = figure_windows(5, manifest, "train", count=5, seed=3)
    assert x.shape[:2] == (5, 5) and len(files) == 5
    assert sorted(files[:2]) == sorted(train) and sorted(files[2:4]) == sorted(train)  # a file a round
    reader = WindowReader(manifest.data_dir, 5, manifest.dataset_key, manifest.latent_shape)
    try:  # every window is one of its file's windows
        for window, rel in zip(x, files):
            assert any(torch.equal(window, torch.from_numpy(reader.read_batch([rel], [start])[0]).float())
                       for start in (0, 4, 8, 11))
    finally:
        reader.close()
    again, _ = figure_windows(5, manifest, "train", count=5, seed=3)
    assert torch.equal(again, x)  # seeded
    everything, _ = figure_windows(5, manifest, "train", count=16, seed=0)
    assert len(everything) == 8  # a split with fewer windows gives them all


def test_real_model_with_a_collapsed_codebook_has_zero_controllability(tiny_data, tmp_path):
    _, cfg, model = write_tiny_checkpoint(tiny_data, tmp_path)
    with torch.no_grad():
        model.quantizer.codebook.copy_(model.quantizer.codebook[..., :1, :].expand_as(model.quantizer.codebook))
    from lam.data.manifest import load_manifest
    from lam.eval.evaluate import split_batches

    manifest = load_manifest(tiny_data / "manifest.json")
    report = summarize(evaluate_windows(model.eval(), split_batches(4, manifest, "val", 4)), cfg.model.num_embeddings ** 3)
    assert all(abs(r["delta_psnr"]) < 1e-6 for r in report["rollout"])


def test_eval_writes_report_and_figures(tiny_data, tmp_path):
    ckpt, _, _ = write_tiny_checkpoint(tiny_data, tmp_path)
    report = evaluate_checkpoint(ckpt, tiny_data, tiny_data / "manifest.json", split="test", out_dir=tmp_path / "eval",
                                 bootstrap=20)
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    # 1 test file of 16 frames, T=4: windows at 0, 3, 6, 9, 12 share one frame and score all 15 transitions
    assert saved["split"] == "test" and saved["windows"] == 5 and saved["transitions"] == 15
    assert [r["horizon"] for r in saved["rollout"]] == [1, 2, 3]
    assert saved["action_ids_used"] == saved["codebook"]["distinct_actions"] and isinstance(saved["warnings"], list)
    gt = saved["ground_truth"]
    assert gt["transitions"] == gt["scored_transitions"] == 15  # cross-fitted: every transition scored once
    assert gt["probe_split"] == "cross-fitted over 5 folds by transition (one file)"
    for key in ("nmi", "chance_accuracy", "code_map_accuracy", "linear_probe_accuracy", "frame_t_minus_1_probe_accuracy",
                "frame_t_probe_accuracy", "best_frame_probe_accuracy"):
        assert 0 <= gt[key] <= 1 and gt[key + ("_std" if key != "best_frame_probe_accuracy" else "")] >= 0, key
    assert gt["code_map_margin"] == pytest.approx(gt["code_map_accuracy"] - gt["best_frame_probe_accuracy"])
    assert gt["kmeans"]["k"] == 2 and 0 <= gt["kmeans"]["nmi"] <= 1  # min(64 ids, max(2, 15 transitions // 10))
    assert gt["action_names"][:2] == ["stay", "up"]
    assert {Path(p).name for p in report["figures"]} == {"changes.png", "action_atlas.png", "code_usage.png", "confusion.png"}
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report["figures"])


def test_lam_eval_end_to_end_with_groups(tiny_data, tmp_path, capsys):
    from lam.commands import main

    ckpt, _, _ = write_tiny_checkpoint(tiny_data, tmp_path)
    code = main(["eval", "--checkpoint", str(ckpt), "--data_dir", str(tiny_data), "--split", "train", "--out", str(tmp_path / "eval"),
                 "--group_by", r"video_(\d+)", "--bootstrap", "10", "--seed", "1"])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["group_source"].startswith("--group_by")
    assert set(report["groups"]) == {"0000", "0002"}  # the capture group names the group
    assert sum(g["transitions"] for g in report["groups"].values()) == report["transitions"] == 30  # 2 files x 15
    for g in report["groups"].values():
        assert {"nmi", "code_map_accuracy", "chance_accuracy", "action_ids_used", "confusion"} <= set(g)
    assert len([p for p in report["figures"] if Path(p).name.startswith("confusion_")]) == 2
    out = capsys.readouterr()
    assert "30 transitions scored" in out.out and "ground truth" in out.out and "per group" in out.out
    assert all(line.startswith("lam eval: warning: ") for line in out.err.splitlines() if "warning" in line)


def test_lam_eval_refuses_a_bad_group_pattern(tiny_data, tmp_path):
    from lam.commands import main

    ckpt, _, _ = write_tiny_checkpoint(tiny_data, tmp_path)
    assert main(["eval", "--checkpoint", str(ckpt), "--data_dir", str(tiny_data), "--group_by", "(unclosed"]) == 2


def test_eval_cli_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    from lam.commands import main

    assert main(["eval", "--checkpoint", str(tmp_path), "--data_dir", str(tmp_path)]) == 2
