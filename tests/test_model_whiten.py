"""Whitening of the pre-quantisation vectors: batch statistics in training, running ones in evaluation,
the penalty that pins the raw statistics, and the same result on two ranks as on one."""

from __future__ import annotations

import torch
from helpers import run_two_ranks, small_model_config

from lam.model import LatentActionModel
from lam.model.whiten import Whitening


def test_whitening_uses_batch_statistics_in_training_and_running_ones_in_eval():
    norm = Whitening(num_codes=2, dim=3, momentum=0.5)
    mix = torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 2.0]])  # correlated dims
    z = (torch.randn(64, 5, 2, 3, generator=torch.Generator().manual_seed(0)) @ mix) * 0.5 + 4.5
    out, _ = norm.train()(z)
    flat = out.reshape(-1, 2, 3)
    torch.testing.assert_close(flat.mean(0), torch.zeros(2, 3), atol=1e-3, rtol=0)
    cov = torch.einsum("nki,nkj->kij", flat, flat) / flat.shape[0]
    torch.testing.assert_close(cov, torch.eye(3).expand(2, 3, 3), atol=2e-2, rtol=0)  # decorrelated (eps aside)
    # running stats moved halfway from (0, I) to the batch's
    torch.testing.assert_close(norm.mean, z.reshape(-1, 2, 3).mean(0) * 0.5, atol=1e-4, rtol=0)
    before = (norm.mean.clone(), norm.cov.clone())
    ev, penalty = norm.eval()(z)
    assert penalty is None
    torch.testing.assert_close(ev, norm._whiten(z, *before))
    torch.testing.assert_close(norm.with_running_statistics(z), ev)
    assert torch.equal(norm.mean, before[0]) and torch.equal(norm.cov, before[1])  # eval changes nothing


def test_whitening_with_one_dim_is_batch_norm():
    norm = Whitening(num_codes=1, dim=1, eps=0.0).train()
    z = torch.randn(100, 1, 1) * 3 + 2
    torch.testing.assert_close(norm(z)[0], (z - z.mean()) / z.std(unbiased=False), atol=1e-4, rtol=0)


def test_gradient_goes_through_the_statistics():
    norm = Whitening(num_codes=1, dim=1).train()
    z = torch.randn(32, 1, 1, requires_grad=True)
    norm(z)[0].sum().backward()  # the sum of standardised values is always 0: no gradient
    torch.testing.assert_close(z.grad, torch.zeros_like(z), atol=1e-5, rtol=0)


def test_penalty_pins_the_raw_statistics_and_is_part_of_vq_loss():
    norm = Whitening(num_codes=1, dim=2).train()
    z = torch.randn(4096, 1, 2, generator=torch.Generator().manual_seed(3))
    z = (z - z.mean(0)) / z.std(0, unbiased=False)  # already mean 0, variance 1
    assert float(norm(z)[1]) < 1e-3  # float32 log-det round-off and eps
    assert float(norm(z * 0.1 + 4.5)[1]) > 10  # 4.5^2 + 0.01 - log(0.01) - 1, per dim
    assert norm.eval()(z)[1] is None
    # in the model, the penalty is what FSQ's vq_loss holds (FSQ has no loss of its own)
    torch.manual_seed(0)
    model = LatentActionModel(small_model_config(quantizer="fsq", whiten=True, num_embeddings=12)).train()
    out = model(torch.randn(4, 3, 4, 16, 16))
    torch.testing.assert_close(out.metrics["loss"] - out.metrics["mse_loss"], out.metrics["vq_loss"])
    assert float(out.metrics["vq_loss"]) > 0


def test_encode_actions_changes_no_state_even_in_train_mode():
    model = LatentActionModel(small_model_config(quantizer="fsq", whiten=True, num_embeddings=12)).train()
    x = torch.randn(4, 3, 4, 16, 16)
    model(x)  # one training forward: running statistics move away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode_actions(torch.randn(4, 3, 4, 16, 16) * 3 + 1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    x2 = torch.randn(2, 3, 4, 16, 16)
    idx_train, z_train = model.encode_actions(x2)
    idx_eval, z_eval = model.eval().encode_actions(x2)  # same answer as in evaluation
    assert torch.equal(idx_train, idx_eval) and torch.allclose(z_train, z_eval)


def _rank(rank: int) -> dict:
    z = torch.randn(4, 3, 2, 4, generator=torch.Generator().manual_seed(5))
    z[2:] += 3.0  # rank 1's data differs
    mine = z[2 * rank : 2 * rank + 2].clone().requires_grad_()
    norm = Whitening(num_codes=2, dim=4).train()
    weight = torch.arange(mine.numel(), dtype=torch.float32).reshape(mine.shape)
    out, _ = norm(mine)
    (out * weight).sum().backward()
    return {"out": out.detach(), "grad": mine.grad, "mean": norm.mean, "cov": norm.cov}


def test_two_ranks_equal_one_process_on_the_whole_batch(tmp_path):
    results = run_two_ranks(_rank, tmp_path)
    z = torch.randn(4, 3, 2, 4, generator=torch.Generator().manual_seed(5))
    z[2:] += 3.0
    z.requires_grad_()
    norm = Whitening(num_codes=2, dim=4).train()
    out, _ = norm(z)
    weight = torch.cat([torch.arange(z[:2].numel(), dtype=torch.float32).reshape(z[:2].shape)] * 2)
    (out * weight).sum().backward()
    for r, res in enumerate(results):
        torch.testing.assert_close(res["out"], out.detach()[2 * r : 2 * r + 2])
        torch.testing.assert_close(res["grad"], z.grad[2 * r : 2 * r + 2], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(res["mean"], norm.mean)  # running stats identical on every rank
        torch.testing.assert_close(res["cov"], norm.cov)
