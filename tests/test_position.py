"""A step checkpoint's position: what each rank had drawn, remembered and summed inside an epoch
comes back exactly, through a checkpoint file read with weights_only. (That a run killed in the
middle of an epoch ends bit for bit like one never stopped: tests/test_kill.py.)"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from helpers import recipe_parts, small_model_config
from lam.model import LatentActionModel
from lam.runtime.checkpoint import load_checkpoint, save_checkpoint
from lam.train.health import SkippedSteps
from lam.train.metrics import CodeCounter, MeanTracker
from lam.train.position import EpochPosition, EpochProgress, gather_rank_states, rank_state, restore_rank_state

CPU = torch.device("cpu")


def draws() -> tuple:
    return random.random(), float(np.random.standard_normal()), torch.randn(3).tolist()


def new_progress(cfg) -> EpochProgress:
    return EpochProgress(tracker=MeanTracker(), grad_norms=MeanTracker(), skipped_before=0,
                         codes=CodeCounter(cfg.num_codes, cfg.num_embeddings, CPU))


@pytest.fixture
def trained_a_little():
    """A `real`-recipe model (its gaussian bottleneck remembers the epoch's vectors per rank) after
    a few training forwards, with an epoch's sums under way."""
    cfg = small_model_config(**recipe_parts("real"), num_codes=1)
    model = LatentActionModel(cfg).train()
    progress, skips = new_progress(cfg), SkippedSteps(CPU, limit=5)
    torch.manual_seed(0)
    for _ in range(3):
        out = model(torch.randn(2, 4, cfg.in_channels, cfg.latent_size, cfg.latent_size))
        progress.tracker.add(out.metrics, weight=2)
        progress.grad_norms.add({"grad_norm": torch.tensor(0.5)}, weight=1)
        progress.codes.add(out.indices)
        skips.add(torch.tensor(True))
        progress.batches_done += 1
    skips.add(torch.tensor(False))  # one skipped step
    return cfg, model, progress, skips


def test_a_rank_state_through_a_checkpoint_file_gives_back_the_same_draws_buffers_and_sums(trained_a_little, tmp_path):
    cfg, model, progress, skips = trained_a_little
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()
    ranks = gather_rank_states(rank_state(model, progress, skips, CPU))  # one process: its own state
    assert len(ranks) == 1
    position = EpochPosition(epoch=4, batches_done=progress.batches_done, ranks=ranks)
    save_checkpoint(tmp_path, model=model.state_dict(), config={}, position=position.to_dict())
    expected_draws = draws()
    expected_buffers = {name: b.clone() for name, b in model.named_buffers()}
    expected_sums = progress.tracker.compute("train", model.metric_names, CPU) | progress.codes.compute("train")

    # Elsewhere: another process's numbers, a model whose epoch went on, an epoch just begun
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    model(torch.randn(2, 4, cfg.in_channels, cfg.latent_size, cfg.latent_size))
    assert not torch.equal(model.quantizer.recent, expected_buffers["quantizer.recent"])
    fresh, fresh_skips = new_progress(cfg), SkippedSteps(CPU, limit=5)

    loaded = EpochPosition.from_dict(load_checkpoint(tmp_path)["position"])
    assert (loaded.epoch, loaded.batches_done) == (4, 3)
    restore_rank_state(loaded.ranks[0], model, fresh, fresh_skips, CPU)
    assert draws() == expected_draws
    assert all(torch.equal(b, expected_buffers[name]) for name, b in model.named_buffers())
    assert fresh.batches_done == 3 and fresh.tracker.compute("train", model.metric_names, CPU) | fresh.codes.compute("train") == expected_sums
    assert fresh.grad_norms.compute("train", ["grad_norm"], CPU) == {"train/grad_norm": 0.5}
    assert fresh_skips.check(step=4, lr=1e-3, warn=False) == 1 and int(fresh_skips.in_a_row) == 1
