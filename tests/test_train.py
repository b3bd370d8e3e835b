"""The training service end to end on the session's local Ray: real Ray Train, real DDP (gloo), real H5."""

import json
import math
import re
import time
from pathlib import Path

import pytest
from helpers import tiny_config
from wandb_files import history_keys

from lam.train.launch import train

SPEC_TRAIN = ["loss", "mse_loss", "mae_loss", "vq_loss", "codebook_loss", "commitment_loss", "codebook_usage"]
SPEC_METRICS = [f"train/{k}" for k in SPEC_TRAIN] + [f"val/{k}" for k in SPEC_TRAIN] + ["train/lr", "train/grad_norm"]


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def epoch_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "epoch" in r]


@pytest.mark.slow
def test_two_worker_ddp_run_learns_logs_and_checkpoints(ray_session, tiny_data, tmp_path, capfd):
    # with the opt-in label head on half the train files: DDP with labelled and unlabelled batches
    cfg = tiny_config(tiny_data, tmp_path, num_workers=2, num_epochs=4, wandb_mode="offline", label_fraction=0.5,
                      rollout="multistep", rollout_horizon=2)
    cfg.train.run_name = "ddp"
    out = train(cfg, verbose=False)

    records = epoch_records(out.run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train/mse_loss"] < records[0]["train/mse_loss"]
    assert all(r["ddp/params_in_sync"] == 1.0 for r in records)  # identical parameters on both ranks
    for key in SPEC_METRICS + ["train/rollout_loss", "train/perplexity", "train/samples_per_s", "train/label_loss", "train/label_accuracy",
                               "train/action_ids_used", "val/action_ids_used", "val/action_perplexity"]:
        assert key in records[-1], key
        assert math.isfinite(records[-1][key])
    assert records[-1]["train/label_loss"] > 0 and "val/label_loss" not in records[-1]  # val files lend no labels
    # checkpoints: the best 3 by val loss plus the latest, each complete
    ckpts = sorted(Path(out.run_dir).glob("checkpoint_epoch*"))
    assert 1 <= len(ckpts) <= 4 and Path(out.checkpoint_path).name == "checkpoint_epoch0004"
    assert all((c / "state.pt").is_file() for c in ckpts)
    assert (Path(out.run_dir) / "config.yaml").is_file()
    # the wandb offline run holds the spec's metric names, read back from wandb's own file
    wandb_file = next(Path(out.wandb_dir).glob("run-*.wandb"))
    assert set(SPEC_METRICS + ["train/rollout_loss"]) <= history_keys(wandb_file)
    # the console: the workers' progress lines without Ray's "(RayTrainWorker pid=...)" prefix or
    # colours; Ray's own lines (Ray Data's execution plans, Train's notices) in the run's ray.log
    console = ""
    for _ in range(50):  # Ray forwards worker output asynchronously
        console += capfd.readouterr().out
        if "[lam] epoch 4/4 done" in console:
            break
        time.sleep(0.2)
    assert "\n[lam] epoch 4/4 done" in "\n" + console
    assert "pid=" not in console and "\x1b[" not in console
    ray_log = (Path(out.run_dir) / "ray.log").read_text()
    assert "pid=" in ray_log and "[lam]" not in ray_log


def test_mean_tracker_weights_tensors_and_floats_and_reads_back_once():
    import torch

    from lam.train.metrics import MeanTracker

    tracker = MeanTracker()
    tracker.add({"loss": torch.tensor(1.0), "usage": 0.5}, weight=2)
    tracker.add({"loss": torch.tensor(4.0, dtype=torch.float16), "usage": torch.tensor(0.8)}, weight=1)
    assert isinstance(tracker.sums["loss"], torch.Tensor)  # summed where it lives, not read back per step
    means = tracker.compute("train", ["loss", "usage", "absent"], torch.device("cpu"))
    assert means == pytest.approx({"train/loss": 2.0, "train/usage": 0.6, "train/absent": 0.0})
    assert MeanTracker().compute("train", ["loss"], torch.device("cpu")) == {}  # a rank that saw no batch


def test_code_use_is_counted_over_the_epoch_not_averaged_over_batches():
    """In-order batches (validation reads each video in order) hold few actions each; shuffled ones
    many. Counted over the epoch, both read the same usage."""
    import torch

    from lam.model.quantize.base import count_codes, usage_and_perplexity
    from lam.train.metrics import CodeCounter

    ids = torch.arange(9).repeat_interleave(8)  # 9 actions, each held for 8 transitions
    codes = torch.stack([ids // 3, ids % 3], dim=-1).reshape(72, 1, 2)  # K=2 codes of M=3: id = 3*c0 + c1
    in_order, shuffled = CodeCounter(2, 3, "cpu"), CodeCounter(2, 3, "cpu")
    per_batch = []
    for lo in range(0, 72, 8):
        in_order.add(codes[lo : lo + 8])
        per_batch.append(float(usage_and_perplexity(count_codes(codes[lo : lo + 8], 2, 3))[0]))
    perm = torch.randperm(72, generator=torch.Generator().manual_seed(0))
    for lo in range(0, 72, 8):
        shuffled.add(codes[perm[lo : lo + 8]])
    assert sum(per_batch) / len(per_batch) == pytest.approx(1 / 3)  # what a mean of per-batch usage reads
    expected = {"train/codebook_usage": 1.0, "train/perplexity": pytest.approx(3.0), "train/action_ids_used": 9,
                "train/action_perplexity": pytest.approx(9.0)}
    assert in_order.compute("train") == expected and shuffled.compute("train") == expected
    skipped = CodeCounter(2, 3, "cpu")
    skipped.add(codes[:8])
    skipped.add(codes[8:], keep=torch.tensor(False))  # a skipped step counts for nothing
    assert skipped.compute("val")["val/action_ids_used"] == 1
    assert CodeCounter(2, 3, "cpu").compute("val") == {}  # nothing counted


def test_checkpoints_are_ranked_by_the_chosen_metric_and_refused_where_it_cannot_exist(tiny_data, tmp_path):
    from lam.config import RunConfig
    from lam.data.manifest import load_manifest
    from lam.errors import UserError
    from lam.train.launch import check_checkpoint_metric
    from lam.train.saving import checkpoint_score

    record = {"val/loss": 0.5, "train/loss": 0.7, "val/delta_psnr": 2.0}
    assert checkpoint_score(record, "val/loss", "min") == 0.5
    assert checkpoint_score(record, "val/delta_psnr", "max") == -2.0  # Ray keeps the lowest: higher is better
    assert checkpoint_score({"train/loss": 0.7}, "val/loss", "min") == 0.7  # no val split: the train loss
    assert checkpoint_score({"val/loss": 0.5}, "val/delta_psnr", "max") is None  # not this epoch: not saved

    def config(**train):
        return RunConfig.from_dict({"data_dir": str(tiny_data), **train})

    config(checkpoint_metric="val/delta_psnr", checkpoint_mode="max", eval_every=1, save_every=2).validate()
    with pytest.raises(UserError, match="it must divide save_every"):
        config(checkpoint_metric="val/delta_psnr", eval_every=2, save_every=3).validate()
    with pytest.raises(UserError, match="checkpoint_metric must be an epoch metric"):
        config(checkpoint_metric="delta_psnr").validate()
    manifest = load_manifest(tiny_data / "manifest.json")
    check_checkpoint_metric(config(checkpoint_metric="val/code_map_accuracy"), manifest)  # the val file has true actions
    manifest.files[manifest.split_files("val")[0]]["has_actions"] = False
    with pytest.raises(UserError, match="scores the val files against their true actions; .* has none"):
        check_checkpoint_metric(config(checkpoint_metric="val/code_map_accuracy"), manifest)
    manifest.splits["val"] = []
    with pytest.raises(UserError, match="needs a val split"):
        check_checkpoint_metric(config(checkpoint_metric="val/action_perplexity"), manifest)
    check_checkpoint_metric(config(), manifest)  # val/loss falls back to the train loss


def test_an_injected_fault_fails_once_on_rank_0_at_its_step(tmp_path):
    """`--inject_fault_at_step` (for exercising `--max_failures`): one failure, remembered in the
    run directory, so the restored run goes past that step. (A real restart, after a killed
    worker: tests/test_kill.py.)"""
    from lam.train.health import maybe_inject_fault

    for at_step, step, rank in [(0, 0, 0), (3, 2, 0), (3, 3, 1)]:  # off; another step; another rank
        maybe_inject_fault(at_step, step, rank, str(tmp_path))
    assert not (tmp_path / ".fault_injected").exists()
    with pytest.raises(RuntimeError, match="injected fault at step 3"):
        maybe_inject_fault(3, 3, 0, str(tmp_path))
    assert (tmp_path / ".fault_injected").read_text() == "step 3\n"
    maybe_inject_fault(3, 3, 0, str(tmp_path))  # after the restart: no second failure


def test_learning_rate_warms_up_linearly_then_decays_to_its_floor():
    from lam.train.schedule import lr_multiplier

    assert [lr_multiplier(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, 4, 20) == 1.0  # the cosine starts at the peak
    assert lr_multiplier(12, 4, 20) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_multiplier(20, 4, 20) == pytest.approx(0.1) == lr_multiplier(30, 4, 20)  # the floor, and it stays


@pytest.mark.slow
def test_a_diverging_run_skips_bad_steps_then_stops_in_one_line_and_saves_nothing_poisoned(
        ray_session, tiny_data, tmp_path, monkeypatch):
    from lam.train.launch import TrainingFailed

    # a relative data_dir, as a user types it: the workers run in other folders
    monkeypatch.chdir(tiny_data.parent)
    cfg = tiny_config(tiny_data.name, tmp_path, learning_rate=1e6, warmup_steps=0, num_epochs=3,
                      max_nonfinite_steps=2, save_every=1, run_name="diverge")
    with pytest.raises(TrainingFailed) as failure:
        train(cfg, verbose=False)
    message = str(failure.value)
    in_a_row = re.search(r"not finite for (\d+) steps in a row", message)  # read every few steps, so >= 3
    assert "\n" not in message and in_a_row and int(in_a_row.group(1)) > 2 and "--max_nonfinite_steps 2" in message
    run_dir = tmp_path / "diverge"
    assert str(run_dir / "error.log") in message and "Traceback" in (run_dir / "error.log").read_text()
    # The loss went non-finite after the first update: epoch 1's checkpoint would have been
    # poisoned (non-finite validation loss), so none was written or registered.
    records = epoch_records(run_dir)
    assert records and not math.isfinite(records[0]["val/loss"]) and records[0]["train/skipped_steps"] >= 1
    assert math.isfinite(records[0]["train/loss"])  # skipped steps stay out of the epoch's means
    assert list(run_dir.glob("checkpoint_epoch*")) == []


def test_the_epoch_line_shows_each_loss_with_the_terms_it_is_made_of():
    from lam.train.metrics import epoch_summary

    record = {"train/loss": 5.99, "train/loss/prediction": 0.019, "train/loss/bottleneck": 5.971, "train/mse_loss": 0.019,
              "train/vq_loss": 5.971, "val/loss": 0.021, "val/loss/prediction": 0.021, "val/loss/bottleneck": 0.0, "epoch": 2}
    line = epoch_summary(record)
    assert line == "train/loss 5.99 (prediction 0.019 + bottleneck 5.971), train/mse_loss 0.019, val/loss 0.021"


def test_the_data_wait_is_a_share_of_the_epoch_and_a_large_one_is_said():
    from lam.train.metrics import EpochClock, data_wait_warning

    clock = EpochClock(0.0)
    clock.loop_start, clock.loop_end, clock.data_wait = 10.0, 30.0, 3.0
    record = clock.record()
    assert record["train/data_wait_fraction"] == pytest.approx(0.15) and record["train/data_wait_s"] == 3.0
    assert "waited on data for 15% of the epoch" in data_wait_warning(record, epoch=1) and "epoch 2" in data_wait_warning(record, 1)
    clock.data_wait = 0.5  # 2.5%: ingest keeps up, nothing said
    assert data_wait_warning(clock.record(), 1) is None

