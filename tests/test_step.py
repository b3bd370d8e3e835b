"""The training step skips a non-finite step on the device and never reads a device value;
the loop's bookkeeping of skipped steps and of the epoch's means."""

from contextlib import nullcontext

import pytest
import torch

from helpers import no_host_reads, recipe_parts, small_model_config
from lam.model import LatentActionModel
from lam.train.health import NonFiniteLoss, SkippedSteps
from lam.train.metrics import MeanTracker
from lam.train.step import TrainStep


# The `real` recipe's parts, on the small model.
REAL_PARTS = recipe_parts("real")


def make_step(**model_overrides) -> tuple[TrainStep, LatentActionModel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    vq_revival = {"dead_code_steps": 1} if model_overrides.get("quantizer", "vq") == "vq" else {}  # a vq setting
    model = LatentActionModel(small_model_config(**({"quantizer": "vq"} | vq_revival | model_overrides)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return TrainStep(model, model, optimizer, scheduler, nullcontext(), grad_clip=1.0), model, optimizer


def batch(seed: int) -> torch.Tensor:
    return torch.randn(2, 4, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def snapshot(model, optimizer) -> dict:
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    for i, per_param in enumerate(optimizer.state.values()):
        state |= {f"opt.{i}.{k}": v.clone() for k, v in per_param.items()}
    return state


@pytest.mark.parametrize("parts", [{}, {"quantizer": "fsq"}, REAL_PARTS, {"rollout": "multistep", "rollout_horizon": 2},
                                   {"quantizer": "gaussian", "label_classes": 3}],
                         ids=["vq", "fsq", "real", "rollout", "gaussian-labels"])
def test_a_step_reads_nothing_back_from_the_device(parts):
    step, _, _ = make_step(**parts)
    step(batch(0))  # VQ revival reads its stored check count once per process
    bad = batch(1)
    bad[0, 1, 0, 0, 0] = float("nan")
    with no_host_reads():
        for x in (batch(2), bad, batch(3)):
            _, grad_norm, applied = step(x)
    assert applied.dtype == torch.bool and grad_norm.dim() == 0


@pytest.mark.parametrize("parts", [{}, REAL_PARTS], ids=["vq", "real"])
def test_a_non_finite_step_changes_no_parameter_optimizer_state_or_buffer(parts):
    step, model, optimizer = make_step(**parts)
    step(batch(0))
    before = snapshot(model, optimizer)
    bad = batch(1)
    bad[1, 2, 3, 4, 5] = float("inf")
    metrics, _, applied = step(bad)
    assert not applied and not torch.isfinite(metrics["loss"])
    after = snapshot(model, optimizer)
    assert after.keys() == before.keys()
    for key, value in before.items():
        if key != "model.quantizer.revive_calls":  # counts revival checks, skipped steps' too: it seeds the draws
            assert torch.equal(value, after[key]), key  # the AdamW step count and the VQ bookkeeping too
    _, _, applied = step(batch(2))
    changed = "quantizer.codebook" if model.config.quantizer == "vq" else "whiten.mean"
    assert applied and not torch.equal(model.state_dict()[changed], before[f"model.{changed}"])


def test_a_skipped_step_leaves_no_vector_in_the_k_means_fit():
    step, model, _ = make_step(**REAL_PARTS)
    bad = batch(1)
    bad[0, 1, 0, 0, 0] = float("nan")
    for x in (batch(0), bad, batch(2)):
        step(x)
    assert model.quantizer.fit_centroids()
    assert torch.isfinite(model.quantizer.centroids).all()


def test_the_step_needs_a_fused_optimizer():
    model = LatentActionModel(small_model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="fused=True"):
        TrainStep(model, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), nullcontext(), 1.0)


def test_skipped_steps_are_counted_on_the_device_and_stop_the_run_past_the_limit(capsys):
    skips = SkippedSteps(torch.device("cpu"), limit=2)
    for applied in (True, False, False, True, False):
        skips.add(torch.tensor(applied))
    assert skips.check(step=5, lr=1e-3, warn=True) == 3
    assert "3 step(s) up to step 5 skipped" in capsys.readouterr().out
    assert skips.check(step=5, lr=1e-3, warn=True) == 3 and capsys.readouterr().out == ""  # nothing new: no line
    for applied in (False, False):
        skips.add(torch.tensor(applied))
    with pytest.raises(NonFiniteLoss, match="not finite for 3 steps in a row .*more than --max_nonfinite_steps 2"):
        skips.check(step=7, lr=1e-3, warn=False)


def test_a_skipped_step_stays_out_of_the_epoch_means():
    tracker = MeanTracker()
    tracker.add({"loss": torch.tensor(2.0)}, weight=4, keep=torch.tensor(True))
    tracker.add({"loss": torch.tensor(float("nan"))}, weight=4, keep=torch.tensor(False))
    tracker.add({"loss": torch.tensor(4.0)}, weight=4, keep=torch.tensor(True))
    assert tracker.compute("train", ["loss"], torch.device("cpu")) == {"train/loss": 3.0}
    nothing = MeanTracker()
    nothing.add({"loss": torch.tensor(float("nan"))}, weight=4, keep=torch.tensor(False))
    assert nothing.compute("train", ["loss"], torch.device("cpu")) == {}
