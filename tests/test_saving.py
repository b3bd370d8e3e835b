"""Asynchronous checkpoints (lam/train/saving.py) in a real Ray Train worker on the session's Ray."""

import json
import os

import pytest
import ray.train
import torch
from ray.train.torch import TorchTrainer

from lam.runtime.checkpoint import STATE_FILE


def _report_back_to_back(config: dict) -> None:
    from lam.train import saving

    storage = ray.train.get_context().get_storage()
    run_dir = storage.experiment_fs_path
    # Large enough that an upload takes far longer than the loop between two reports.
    state = {"model": {"w": torch.arange(2_000_000, dtype=torch.float32)}}
    landed = []
    for k in range(4):
        state["model"]["w"][0] = k  # training goes on changing the state after each report
        saving.report({"k": k}, state, run_dir, f"checkpoint_{k}", "async")
        landed.append([os.path.exists(os.path.join(run_dir, f"checkpoint_{j}", STATE_FILE)) for j in range(k + 1)])
    with open(config["out"], "w") as f:
        json.dump({"landed": landed, "run_dir": run_dir}, f)


@pytest.mark.slow
def test_at_most_one_asynchronous_checkpoint_is_in_flight(ray_session, tmp_path):
    out = tmp_path / "landed.json"
    TorchTrainer(_report_back_to_back, train_loop_config={"out": str(out)},
                 scaling_config=ray.train.ScalingConfig(num_workers=1),
                 run_config=ray.train.RunConfig(name="saving", storage_path=str(tmp_path / "runs"))).fit()
    result = json.loads(out.read_text())
    # When a checkpoint's report returns, every earlier one is in the run directory: a new
    # checkpoint waited for the one before it, so a resume is never more than one behind.
    assert [row[:-1] for row in result["landed"]] == [[], [True], [True, True], [True, True, True]]
    for k in range(4):  # each holds the state as it was when reported, not as training changed it later
        state = torch.load(os.path.join(result["run_dir"], f"checkpoint_{k}", STATE_FILE), weights_only=True)
        assert float(state["model"]["w"][0]) == k and float(state["model"]["w"][-1]) == 1_999_999
