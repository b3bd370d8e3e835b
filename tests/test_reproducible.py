"""Reproducible runs: a seed fixes the data order of every epoch and every number a run logs,
straight through and after a worker restart. Real Ray Train on the session's local Ray. (After a
killed driver and the same command again: tests/test_kill.py.)"""

import json
from pathlib import Path

import pytest
import ray
from helpers import tiny_config

from lam.train.launch import prepare, train

# What depends on the machine's speed, not on the seed.
TIME_KEYS = {"time", "train/samples_per_s", "train/steady_samples_per_s", "train/data_wait_s", "checkpoint/stall_s"}


def logged_numbers(run_dir) -> list[dict]:
    """Every record of the run's metrics.jsonl, without times and throughputs."""
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS} for line in lines]


def weights(checkpoint_dir) -> dict:
    import torch

    return torch.load(Path(checkpoint_dir, "state.pt"), weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    """Bit-identical parameters and buffers (the quantizer's counters and recent outputs too)."""
    import torch

    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def _tag_windows(batch):
    # Identify each window by its content: the sum of frame 0 is unique per window here.
    return {"tag": [f"{float(x[0].astype('float64').sum()):.6f}" for x in batch["x"]]}


def test_each_epoch_reads_the_order_of_its_seed_and_epoch(ray_session, tiny_data, tmp_path):
    """The train dataset reads epoch e in `epoch_order(n, seed, e)`: the epoch comes from the clock,
    the order from (seed, epoch) only, the same every time it is read."""
    from lam.data.manifest import load_manifest
    from lam.data.windows import build_window_index
    from lam.train.ingest import EpochClock, build_datasets, epoch_order, window_dataset

    manifest = load_manifest(tiny_data / "manifest.json")
    cfg = tiny_config(tiny_data, tmp_path, stride=1)
    index = build_window_index(manifest, "train", cfg.data.sequence_length, cfg.data.train_stride)
    in_index_order = window_dataset(index, manifest, shuffle=False, rows_per_block=4).map_batches(_tag_windows, batch_format="numpy")
    tags = [row["tag"] for row in in_index_order.iter_rows()]
    assert len(set(tags)) == len(index) == 26

    clock = EpochClock.remote()
    read = {}
    for seed in (0, 1):
        cfg.train.seed = seed
        train_ds = build_datasets(cfg, manifest, clock=clock)[0]["train"].map_batches(_tag_windows, batch_format="numpy")
        for epoch in (0, 1, 0):
            ray.get(clock.set.remote(epoch))
            order = [row["tag"] for row in train_ds.iter_rows()]
            assert order == [tags[i] for i in epoch_order(len(index), seed, epoch)], (seed, epoch)
            assert read.setdefault((seed, epoch), order) == order  # read again: the same order
    assert read[0, 0] != read[0, 1]  # a new order every epoch
    assert read[0, 0] != read[1, 0] and read[0, 1] != read[1, 1]  # another seed, other orders
    assert sorted(read[0, 0]) == sorted(read[1, 0]) == sorted(tags)  # every window once


@pytest.mark.slow
def test_two_workers_repeat_with_and_without_a_worker_restart(ray_session, tiny_data, tmp_path, monkeypatch):
    from lam.train import ingest

    monkeypatch.setattr(ingest, "WINDOWS_PER_READ_TASK", 2)  # read tasks of one block: they may finish in any order
    # 2 workers x 2 windows per step: 2 steps per epoch; step 5 is in epoch 3, after the epoch-2 checkpoint.
    def config(run_name, **overrides):
        return tiny_config(tiny_data, tmp_path, num_workers=2, num_epochs=3, dead_code_steps=2, run_name=run_name, **overrides)

    straight = train(config("ddp_straight"), verbose=False)
    restarted = train(config("ddp_restarted", inject_fault_at_step=5, max_failures=1), verbose=False)
    assert (Path(restarted.run_dir) / ".fault_injected").is_file()  # it did fail and restart

    a, b = logged_numbers(straight.run_dir), logged_numbers(restarted.run_dir)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]
    # Bit for bit, not just close: each rank gets the same blocks in the same order, and on CPU
    # gloo sums the ranks' gradients and metrics in a fixed order.
    assert a == b
    assert_same_weights(weights(straight.checkpoint_path), weights(restarted.checkpoint_path))


def test_a_negative_seed_is_refused_at_start_up(tmp_path):
    from lam.errors import UserError

    with pytest.raises(UserError, match="seed must be >= 0"):
        prepare(tiny_config(tmp_path, tmp_path, seed=-1))
