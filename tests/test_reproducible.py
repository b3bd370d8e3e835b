"""Reproducible runs: a seed fixes the data order of every epoch, whichever read task finishes
first. (That a 2-worker run logs the same numbers and ends with the same weights, bit for bit,
straight through, after a killed worker and after a killed driver: tests/test_kill.py.)"""

import pytest
import ray
from helpers import tiny_config

from lam.train.launch import prepare


def _tag_windows(batch):
    # Identify each window by its content: the sum of frame 0 is unique per window here.
    return {"tag": [f"{float(x[0].astype('float64').sum()):.6f}" for x in batch["x"]]}


def test_each_epoch_reads_the_order_of_its_seed_and_epoch(ray_session, tiny_data, tmp_path, monkeypatch):
    """The train dataset reads epoch e in `epoch_order(n, seed, e)`: the epoch comes from the ledger,
    the order from (seed, epoch) only, the same every time it is read, though its read tasks
    (several per epoch here) may finish in any order."""
    from lam.data.manifest import load_manifest
    from lam.train import ingest
    from lam.data.windows import build_window_index
    from lam.train.ingest import build_datasets, epoch_order, window_dataset
    from lam.train.ledger import RunLedger

    manifest = load_manifest(tiny_data / "manifest.json")
    monkeypatch.setattr(ingest, "WINDOWS_PER_READ_TASK", 2)  # read tasks of one block each
    cfg = tiny_config(tiny_data, tmp_path, stride=1)
    index = build_window_index(manifest, "train", cfg.data.sequence_length, cfg.data.train_stride)
    in_index_order = window_dataset(index, manifest, shuffle=False, rows_per_block=4).map_batches(_tag_windows, batch_format="numpy")
    tags = [row["tag"] for row in in_index_order.iter_rows()]
    assert len(set(tags)) == len(index) == 26

    ledger = RunLedger.remote()
    read = {}
    for seed in (0, 1):
        cfg.train.seed = seed
        train_ds = build_datasets(cfg, manifest, ledger=ledger)[0]["train"].map_batches(_tag_windows, batch_format="numpy")
        for epoch in (0, 1, 0):
            ray.get(ledger.set_epoch.remote(epoch))
            order = [row["tag"] for row in train_ds.iter_rows()]
            assert order == [tags[i] for i in epoch_order(len(index), seed, epoch)], (seed, epoch)
            assert read.setdefault((seed, epoch), order) == order  # read again: the same order
    assert read[0, 0] != read[0, 1]  # a new order every epoch
    assert read[0, 0] != read[1, 0] and read[0, 1] != read[1, 1]  # another seed, other orders
    assert sorted(read[0, 0]) == sorted(read[1, 0]) == sorted(tags)  # every window once


def test_a_negative_seed_is_refused_at_start_up(tmp_path):
    from lam.errors import UserError

    with pytest.raises(UserError, match="seed must be >= 0"):
        prepare(tiny_config(tmp_path, tmp_path, seed=-1))
