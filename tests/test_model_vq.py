"""The VQ bottleneck: invariants, gradients, usage/perplexity, dead-code revival, 2-process gloo group."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import no_host_reads, run_two_ranks, small_model_config

from lam.model import LatentActionModel
from lam.model.quantize import VectorQuantizer


def make_quantizer(num_codes=3, num_embeddings=12, codebook_dim=16, dead_code_steps=5, seed=0, **kw) -> VectorQuantizer:
    torch.manual_seed(seed)
    return VectorQuantizer(
        num_codes=num_codes, num_embeddings=num_embeddings, codebook_dim=codebook_dim,
        dead_code_steps=dead_code_steps, **kw,
    )


def encoder_outputs(n: int, num_codes=3, codebook_dim=16, seed=1) -> torch.Tensor:
    return torch.randn(n, 4, num_codes, codebook_dim, generator=torch.Generator().manual_seed(seed))  # (B, T-1, K, D)


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("num_codes, num_embeddings", [(1, 2), (3, 12), (2, 7)])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_quantize_invariants(num_codes, num_embeddings, bf16, training):
    vq = make_quantizer(num_codes, num_embeddings).train(training)
    z = encoder_outputs(6, num_codes)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = vq(z.bfloat16() if bf16 else z)
    assert out.indices.shape == z.shape[:-1] and out.indices.dtype == torch.long
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    # Decoding the indices gives the quantized tensor (the straight-through value is z + (q - z)).
    torch.testing.assert_close(vq.lookup(out.indices), out.quantized, rtol=0, atol=1e-5)
    # The indices are the true nearest entries (brute force, float32).
    zf = (z.bfloat16() if bf16 else z).float()
    d = ((zf[..., None, :] - vq.codebook.detach()[None, None]) ** 2).sum(-1)  # (B, T-1, K, M)
    assert torch.equal(out.indices, d.argmin(-1))
    assert torch.equal(vq.nearest(z.bfloat16() if bf16 else z), out.indices)
    # Losses: finite, non-negative, the documented combination; the two MSEs have equal values.
    assert set(out.losses) == set(vq.loss_names) == {"codebook_loss", "commitment_loss"}
    codebook_loss, commitment_loss = out.losses["codebook_loss"], out.losses["commitment_loss"]
    for value in (out.loss, codebook_loss, commitment_loss):
        assert torch.isfinite(value) and value >= 0 and value.dtype == torch.float32
    torch.testing.assert_close(codebook_loss, commitment_loss)
    torch.testing.assert_close(out.loss, codebook_loss + vq.commitment_weight * commitment_loss)
    assert 0 < out.usage <= 1 and 1 <= out.perplexity <= num_embeddings + 1e-4


def test_gradients_straight_through_to_encoder_and_codebook_loss_to_codebook():
    vq = make_quantizer().train()
    z = encoder_outputs(4).requires_grad_()
    out = vq(z)
    weight = torch.randn_like(z)
    (out.quantized * weight).sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, weight)  # straight-through: identity gradient
    assert vq.codebook.grad is None  # the quantized output alone never moves the codebook

    z.grad = None
    out.losses["commitment_loss"].backward(retain_graph=True)
    assert vq.codebook.grad is None and z.grad.abs().sum() > 0  # commitment only moves the encoder

    z.grad = None
    out.losses["codebook_loss"].backward()
    assert z.grad is None or z.grad.abs().sum() == 0  # codebook loss only moves the codebook
    used = torch.zeros(vq.num_codes, vq.num_embeddings, dtype=torch.bool)
    used.scatter_(1, out.indices.reshape(-1, vq.num_codes).t(), True)
    row_grad = vq.codebook.grad.abs().sum(-1)  # (K, M)
    assert (row_grad[used] > 0).all() and (row_grad[~used] == 0).all()


def test_gradients_in_the_full_model():
    """Reconstruction reaches the encoder only through the straight-through path; the codebook only through vq."""
    cfg = small_model_config(codebook_dim=4, num_embeddings=3)
    torch.manual_seed(0)
    model = LatentActionModel(cfg).train()
    torch.nn.init.normal_(model.decoder.proj_out.weight, std=0.5)  # let the decoder output depend on the action
    x = torch.randn(2, 3, 4, 16, 16)
    out = model(x)
    mse = (out.predictions - x[:, 1:]).pow(2).mean()
    mse.backward(retain_graph=True)
    assert model.encoder.head.to_action.weight.grad.abs().sum() > 0
    assert model.encoder.head.proj_in.weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad is None
    model.zero_grad(set_to_none=True)
    (out.loss - mse).backward()  # the vq loss (the mse terms cancel exactly)
    assert model.quantizer.codebook.grad.abs().sum() > 0
    assert model.decoder.proj_in.weight.grad.abs().sum() == 0


# ----------------------------------------------------------------------------- usage / perplexity / state


def test_usage_and_perplexity_values():
    vq = make_quantizer(num_codes=2, num_embeddings=4, codebook_dim=2).eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[[0.0, 0], [10, 0], [0, 10], [10, 10]]] * 2))
    # position 0 uses entries 0,1,2,3 once each; position 1 uses entry 3 four times
    z = torch.tensor([[[0.0, 0], [10, 10]], [[10, 0], [10, 10]], [[0, 10], [10, 10]], [[10, 10], [10, 10]]])
    out = vq(z)
    assert out.indices.tolist() == [[0, 3], [1, 3], [2, 3], [3, 3]]
    torch.testing.assert_close(out.usage, torch.tensor(5 / 8))
    torch.testing.assert_close(out.perplexity, torch.tensor((4.0 + 1.0) / 2))


def test_staleness_is_tracked_in_training_only():
    vq = make_quantizer(num_codes=1, num_embeddings=4, codebook_dim=2, recent_size=8)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[[0.0, 0], [10, 0], [0, 10], [10, 10]]]))
    z = torch.tensor([[[0.1, 0.0]], [[9.9, 0.0]]])  # uses entries 0 and 1
    vq.eval()(z)
    assert vq.steps_since_used.sum() == 0 and vq.recent_count == 0
    vq.train()
    for _ in range(3):
        vq(z)
    assert vq.steps_since_used.tolist() == [[0, 0, 3, 3]]
    # The buffer holds the latest batch only ...
    assert vq.recent_count == 2
    torch.testing.assert_close(vq.recent[0, :2], z[:, 0])
    # ... and an evenly spread subset of a batch larger than the buffer.
    big = torch.linspace(0, 1, 20)[:, None, None].expand(20, 1, 2)
    vq(big)
    assert vq.recent_count == 8 and vq.recent.shape == (1, 8, 2)
    torch.testing.assert_close(vq.recent[0, [0, -1]], big[[0, -1], 0])
    assert vq.steps_since_used.tolist() == [[0, 1, 4, 4]]


# ----------------------------------------------------------------------------- revival


def test_revival_replaces_a_dead_entry_with_a_recent_encoder_output():
    vq = make_quantizer(num_codes=3, num_embeddings=6, codebook_dim=8, dead_code_steps=4).train()
    with torch.no_grad():
        vq.codebook[1, 2] = 1e3  # far from every encoder output: never picked
    z = encoder_outputs(8, num_codes=3, codebook_dim=8)
    for step in range(4):
        out = vq(z)
        assert not (out.indices[..., 1] == 2).any()
        if step < 3:
            assert vq.revive_dead_codes() == 0  # not dead long enough yet
    dead = vq.steps_since_used >= 4
    assert dead[1, 2]
    before = vq.codebook.detach().clone()
    n = vq.revive_dead_codes()
    assert n == int(dead.sum()) >= 1
    after = vq.codebook.detach()
    assert torch.equal(after[~dead], before[~dead])  # live entries untouched
    assert (vq.steps_since_used[dead] == 0).all()
    # The revived entry sits near (not on) one of the recent encoder outputs of its code position.
    dists = (vq.recent[1, : int(vq.recent_count)] - after[1, 2]).norm(dim=-1)
    assert 0 < dists.min() < 0.2 * z[..., 1, :].norm(dim=-1).mean()
    assert vq(z).indices[..., 1].eq(2).any()  # and it is used again


def test_revival_reads_nothing_back_from_the_device():
    # On a GPU, reading a device value waits for every queued kernel.
    vq = make_quantizer(num_codes=3, num_embeddings=6, codebook_dim=8, dead_code_steps=2).train()
    with torch.no_grad():
        vq.codebook[1, 2] = 1e3
    z = encoder_outputs(8, num_codes=3, codebook_dim=8)
    vq(z)
    vq.revive_dead_codes()  # the first check of a process reads the stored check count once
    revived = []
    for _ in range(3):
        vq(z)
        with no_host_reads():
            revived.append(vq.revive_dead_codes())
    assert sum(int(n) for n in revived) >= 1 and vq.codebook[1, 2].abs().max() < 100  # and it did revive


def test_revival_draws_the_same_after_a_checkpoint_round_trip():
    # The draws depend on the quantizer's seed and the stored count of checks, so a resumed
    # run revives exactly as an uninterrupted one.
    def run(resume_after: int | None) -> torch.Tensor:
        torch.manual_seed(0)
        vq = make_quantizer(num_codes=2, num_embeddings=6, codebook_dim=4, dead_code_steps=1).train()
        z = encoder_outputs(8, num_codes=2, codebook_dim=4)
        for step in range(4):
            if step == resume_after:
                state = {k: v.clone() for k, v in vq.state_dict().items()}
                vq = make_quantizer(num_codes=2, num_embeddings=6, codebook_dim=4, dead_code_steps=1).train()
                vq.load_state_dict(state)
            vq(z)
            vq.revive_dead_codes()
        return vq.codebook.detach().clone()

    straight = run(None)
    assert torch.equal(run(2), straight)
    assert not torch.equal(straight, make_quantizer(num_codes=2, num_embeddings=6, codebook_dim=4).codebook)


def test_revival_disabled_and_without_data():
    vq = make_quantizer(dead_code_steps=0).train()
    with torch.no_grad():
        vq.codebook[0, 0] = 1e3
    for _ in range(3):
        vq(encoder_outputs(2))
    assert vq.revive_dead_codes() == 0 and vq.codebook[0, 0, 0] == 1e3
    assert vq.recent_count == 0  # no buffer writes when revival is off

    vq = make_quantizer(dead_code_steps=1)
    vq.steps_since_used.fill_(5)  # dead, but no encoder outputs seen yet
    assert vq.revive_dead_codes() == 0


# ----------------------------------------------------------------------------- 2-process gloo group

WORLD = 2
BATCH_PER_RANK = 6


def _all_batches(steps: int) -> torch.Tensor:
    """(steps, WORLD * BATCH_PER_RANK, 2, K=3, D=8): per step, all ranks' batches concatenated."""
    g = torch.Generator().manual_seed(123)
    z = torch.randn(steps, WORLD * BATCH_PER_RANK, 2, 3, 8, generator=g)
    z[:, BATCH_PER_RANK:] += 2.0  # rank 1 sees clearly different data
    return z


def _rank(rank: int) -> dict:
    """One rank's quantizer statistics and revived codebooks, alone and inside a DDP-wrapped model."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    result = {}
    # --- the quantizer alone: same init on every rank, different data per rank ---
    steps = 3
    batches = _all_batches(steps)[:, rank * BATCH_PER_RANK : (rank + 1) * BATCH_PER_RANK]
    vq = make_quantizer(num_codes=3, num_embeddings=6, codebook_dim=8, dead_code_steps=2).train()
    with torch.no_grad():
        vq.codebook[0, 5] = 1e3  # a deliberately dead entry
    result["usage"], result["perplexity"] = [], []
    for step in range(steps):
        out = vq(batches[step])
        result["usage"].append(out.usage)
        result["perplexity"].append(out.perplexity)
    result["revived"] = vq.revive_dead_codes()
    result["codebook"] = vq.codebook.detach().clone()
    result["recent"] = vq.recent.clone()
    result["steps_since_used"] = vq.steps_since_used.clone()

    # --- a DDP-wrapped small model: train steps with revival stay in sync ---
    torch.manual_seed(0)
    model = LatentActionModel(small_model_config(encoder_depth=1, decoder_depth=1, codebook_dim=4, num_embeddings=4,
                                                 dead_code_steps=2))
    ddp = DDP(model, broadcast_buffers=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1000 + rank)
    for _ in range(3):
        out = ddp(torch.randn(2, 3, 4, 16, 16, generator=g))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.after_optimizer_step()  # the training loop's hook: revival, in step on every rank
    result["model_revived"] = int(model.quantizer.revive_calls)  # revival checks (one a step)
    result["model_state"] = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "quantizer.recent"}
    result["model_recent"] = model.quantizer.recent.clone()
    return result


def test_two_process_gloo_group_shares_statistics_and_codebooks(tmp_path):
    r0, r1 = run_two_ranks(_rank, tmp_path)

    # Usage and perplexity are those of all ranks' batches together, computed in one process.
    reference = make_quantizer(num_codes=3, num_embeddings=6, codebook_dim=8, dead_code_steps=2).train()
    with torch.no_grad():
        reference.codebook[0, 5] = 1e3
    for step, z in enumerate(_all_batches(3)):
        out = reference(z)
        for r in (r0, r1):
            torch.testing.assert_close(r["usage"][step], out.usage)
            torch.testing.assert_close(r["perplexity"][step], out.perplexity)
        # and they differ from what a rank sees alone (the test is not vacuous)
    local = make_quantizer(num_codes=3, num_embeddings=6, codebook_dim=8).eval()
    with torch.no_grad():
        local.codebook[0, 5] = 1e3
    assert not math.isclose(local(_all_batches(3)[-1, :BATCH_PER_RANK]).perplexity.item(), r0["perplexity"][-1].item())

    # Revival: the ranks saw different encoder outputs but end with bit-identical codebooks.
    assert not torch.equal(r0["recent"], r1["recent"])
    assert r0["revived"] == r1["revived"] >= 1
    assert torch.equal(r0["codebook"], r1["codebook"])
    assert torch.equal(r0["steps_since_used"], r1["steps_since_used"])
    assert r0["codebook"][0, 5].abs().max() < 100  # the dead entry was revived

    # Under DDP, parameters, codebooks and revival buffers stay identical across ranks.
    assert r0["model_revived"] == r1["model_revived"] >= 1
    assert not torch.equal(r0["model_recent"], r1["model_recent"])
    for name, value in r0["model_state"].items():
        assert torch.equal(value, r1["model_state"][name]), name
