"""The run-long ingest (lam/train/ingest.py) on the tests' shared local Ray and real H5: each rank's
share of every epoch, read in one Ray Data execution. (Through real Ray Train and DDP, with
step checkpoints, killed workers and drivers: tests/test_train.py, tests/test_kill.py.)"""

import numpy as np
import pytest
from helpers import tiny_config

from lam.data.manifest import load_manifest
from lam.train import ingest
from lam.train.ingest import TRAIN, RankBatches, epoch_order, plan_ingest


def tags(batch) -> list[str]:
    # Identify each window by its content: the sum of frame 0 is unique per window here.
    return [f"{float(x[0].double().sum()):.6f}" for x in batch["x"]]


def plan_for(tiny_data, tmp_path, **overrides):
    cfg = tiny_config(tiny_data, tmp_path, stride=1, **overrides)  # 2 train files x 13 windows
    return plan_ingest(cfg, load_manifest(tiny_data / "manifest.json"))


def read_run(plan, rank, world, first_epoch, end_epoch, skip=0) -> dict:
    """{(part, epoch): [[tags of a batch], ...]} of one rank's stream."""
    data = RankBatches(plan, rank, world, first_epoch, end_epoch, skip)
    out = {}
    for epoch in range(first_epoch, end_epoch):
        out["train", epoch] = [tags(b) for b in data.train(epoch)]
        out["val", epoch] = [tags(b) for b in data.val(epoch)]
    assert data._peek() is None  # the stream ends with the run
    data.close()
    return out


def index_tags(plan, part: str) -> list[str]:
    index = plan.train if part == "train" else plan.val
    x = ingest.read_windows({"file": [index.files[f] for f in index.file_ids], "start": index.starts.tolist()}, **plan.read_kwargs)["x"]
    return [f"{float(w[0].astype('float64').sum()):.6f}" for w in x]


def test_ranks_read_equal_disjoint_shares_of_each_epoch_in_its_order(ray_session, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "WINDOWS_PER_READ_TASK", 3)  # several read tasks an epoch even on tiny data
    plan, sizes = plan_for(tiny_data, tmp_path, batch_size=6, num_workers=2)  # 3 windows per worker per step
    train_tags, val_tags = index_tags(plan, "train"), index_tags(plan, "val")
    n = sizes["train"]
    assert n == len(set(train_tags)) == 26 and plan.batches(TRAIN, 0, 2) == 5  # 13 windows a rank: 4 x 3 + 1
    runs = [read_run(plan, rank, 2, 0, 3) for rank in range(2)]
    for epoch in range(3):
        order = [train_tags[i] for i in epoch_order(n, plan.seed, epoch)]
        shares = [[t for batch in run["train", epoch] for t in batch] for run in runs]
        assert shares[0] == order[:13] and shares[1] == order[13:]  # equal, disjoint, in the epoch's order: every window once
        assert [len(b) for b in runs[0]["train", epoch]] == [3, 3, 3, 3, 1]  # one block a batch; the same steps on both ranks
        val = [t for run in runs for batch in run["val", epoch] for t in batch]
        assert val == val_tags  # each rank evaluates its run of the val split, every epoch
    assert runs[0]["train", 0] != runs[0]["train", 1]  # a new order every epoch
    again = read_run(plan, 1, 2, 0, 3)
    assert again == runs[1]  # the same windows in the same order, however the read tasks were scheduled


def test_a_restarted_or_resumed_rank_reads_on_from_its_epoch_and_step(ray_session, tiny_data, tmp_path):
    """A worker restored by Ray Train, or a run resumed from a step checkpoint (epoch 2, after 3 of
    its batches), reads what a run never stopped reads from there on, and nothing before it."""
    plan, _ = plan_for(tiny_data, tmp_path, batch_size=4, num_workers=2, seed=7)
    straight = read_run(plan, 1, 2, 0, 4)
    resumed = read_run(plan, 1, 2, 2, 4, skip=3)
    assert resumed["train", 2] == straight["train", 2][3:]
    assert resumed["val", 2] == straight["val", 2] and resumed["train", 3] == straight["train", 3]
    assert read_run(plan, 1, 2, 1, 4)["train", 1] == straight["train", 1]  # an epoch checkpoint: from the epoch's start


def test_blocks_smaller_than_a_batch_are_put_together_into_the_same_batches(ray_session, tiny_data, tmp_path):
    whole, _ = plan_for(tiny_data, tmp_path, batch_size=6, num_workers=2)
    small, _ = plan_for(tiny_data, tmp_path, batch_size=6, num_workers=2, read_batch_size=2)  # 2 blocks of 2, 1 of 1 a batch
    assert small.rows_per_block == 2 and whole.rows_per_block == 3
    assert read_run(small, 0, 2, 0, 2) == read_run(whole, 0, 2, 0, 2)


def test_a_labelled_run_carries_each_windows_true_actions(ray_session, tiny_data, tmp_path):
    plan, _ = plan_for(tiny_data, tmp_path, batch_size=4, num_workers=1, label_fraction=1.0)
    data = RankBatches(plan, 0, 1, 0, 1)
    batch = next(data.train(0))
    assert tuple(batch["labels"].shape) == (4, plan.read_kwargs["sequence_length"] - 1)
    assert (batch["labels"] >= 0).all()  # every transition of a train file labelled at fraction 1
    assert all("labels" not in b for b in data.val(0))  # val files are never read for labels
    data.close()


def test_asking_for_another_epoch_than_the_next_is_a_bug_that_says_so(ray_session, tiny_data, tmp_path):
    plan, _ = plan_for(tiny_data, tmp_path, batch_size=4, num_workers=1)
    data = RankBatches(plan, 0, 1, 0, 2)
    with pytest.raises(RuntimeError, match="expected train batch 0 of epoch 2"):
        next(data.train(1))
    data.close()  # mid-run: its reads stop


def test_no_epoch_left_means_no_read(ray_session, tiny_data, tmp_path):
    plan, _ = plan_for(tiny_data, tmp_path)
    data = RankBatches(plan, 0, 1, 3, 3)  # resumed after the last epoch
    assert list(data.val(3)) == [] and data._peek() is None
    assert np.array_equal(plan.share(TRAIN, 0, 0, 1), epoch_order(len(plan.train), plan.seed, 0))


def test_each_rank_reads_within_its_own_slice_of_the_read_cpus(tiny_data, tmp_path):
    """A rank blocked in an all-reduce keeps its paused read tasks' CPUs; no rank may take the
    slice another needs to reach that all-reduce."""
    plan, _ = plan_for(tiny_data, tmp_path)
    plan.read_cpus = 1.0  # a sweep's trial
    assert plan.rank_read_cpus(2) == (0.5, 0.5)  # both ranks' tasks fit at once
    plan.read_cpus = 6.0
    assert plan.rank_read_cpus(2) == (3.0, 1.0)  # up to 3 one-CPU tasks a rank


def test_read_ahead_is_bounded_by_bytes_unless_given_in_batches(tiny_data, tmp_path, monkeypatch):
    plan, _ = plan_for(tiny_data, tmp_path, batch_size=6, num_workers=2)  # 3 windows a batch, one block each
    plan.window_bytes = 2**20
    monkeypatch.setattr(ingest, "READ_AHEAD_BYTES", 30 * 2**20)
    assert plan.read_ahead_blocks() == 10  # 30 MiB of 3 MiB blocks
    assert plan.read_ahead_blocks(prefetch_batches=4) == 4
    plan.rows_per_block = 1  # three blocks a batch: a count of batches is kept in batches
    assert plan.read_ahead_blocks(prefetch_batches=4) == 12 and plan.read_ahead_blocks() == 30
    plan.window_bytes = 2**30  # batches larger than the bound: still two of them ahead
    assert plan.read_ahead_blocks() == 6
