"""Finite scalar quantisation and the running standardisation of pre-quantisation vectors."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from lam.model import ModelConfig, VVAELatentActionVQVAE
from lam.model.quantizer import FiniteScalarQuantizer, RunningStandardize, fsq_levels_for


# ----------------------------------------------------------------------------- levels


@pytest.mark.parametrize("m, levels", [(2, (2,)), (5, (5,)), (8, (2, 4)), (12, (3, 4)), (16, (4, 4)), (27, (3, 3, 3))])
def test_levels_factorise_num_embeddings(m, levels):
    assert fsq_levels_for(m) == levels


def test_explicit_levels_must_multiply_to_num_embeddings():
    assert fsq_levels_for(12, "2,6") == (2, 6)
    with pytest.raises(ValueError, match="num_embeddings"):
        fsq_levels_for(12, "3,3")
    with pytest.raises(ValueError, match=">= 2"):
        fsq_levels_for(1)


# ----------------------------------------------------------------------------- rounding


@pytest.mark.parametrize("levels", [(2,), (3,), (2, 4), (3, 4), (3, 3, 3)])
def test_values_are_grid_points_in_bounds_and_ids_cover_the_range(levels):
    q = FiniteScalarQuantizer(num_codes=3, levels=levels)
    z = torch.randn(4000, 3, len(levels), generator=torch.Generator().manual_seed(0)) * 3
    out = q(z)
    m = q.num_embeddings
    assert out.indices.dtype == torch.long and out.indices.shape == (4000, 3)
    assert int(out.indices.min()) == 0 and int(out.indices.max()) == m - 1  # every id reachable, none beyond
    assert out.quantized.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(q.lookup(out.indices), out.quantized, rtol=0, atol=1e-6)
    assert torch.equal(q.nearest(z), out.indices)
    # each dim takes exactly L values, evenly spaced from -1 to 1
    for j, level in enumerate(levels):
        values = torch.unique(out.quantized[..., j].round(decimals=5))
        torch.testing.assert_close(values, torch.linspace(-1, 1, level))
    for loss in (out.loss, out.codebook_loss, out.commitment_loss):
        assert float(loss) == 0.0


def test_bins_are_symmetric_so_unit_variance_inputs_use_every_level():
    q = FiniteScalarQuantizer(num_codes=1, levels=(2, 4))
    z = torch.randn(20000, 1, 2, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(q(z).indices.flatten(), minlength=8).float() / 20000
    assert counts.min() > 0.08  # uniform would be 0.125; no level starves
    # odd levels: 0 is the centre bin; even levels: 0 is a bin edge
    assert q.nearest(torch.tensor([[[-1e-4, -1e-4]]])).item() != q.nearest(torch.tensor([[[1e-4, 1e-4]]])).item()
    q3 = FiniteScalarQuantizer(num_codes=1, levels=(3,))
    torch.testing.assert_close(q3.lookup(q3.nearest(torch.zeros(1, 1, 1))), torch.zeros(1, 1, 1))


def test_lookup_inverts_ids():
    q = FiniteScalarQuantizer(num_codes=2, levels=(3, 4))
    ids = torch.arange(12).repeat(2, 1).t()  # (12, 2)
    assert torch.equal(q.nearest(torch.atanh(q.lookup(ids) * 0.99 * 2 / 3)), ids)  # bin centres map back


def test_gradient_is_straight_through():
    q = FiniteScalarQuantizer(num_codes=1, levels=(3,))
    z = torch.tensor([[[0.3]], [[-2.0]]], requires_grad=True)
    q(z).quantized.sum().backward()
    # d/dz of tanh(z) * L / (L - 1), not the zero derivative of rounding
    expected = (1 - torch.tanh(z.detach()) ** 2) * 3 / 2
    torch.testing.assert_close(z.grad, expected)


def test_usage_and_perplexity():
    q = FiniteScalarQuantizer(num_codes=1, levels=(2, 2))
    z = torch.tensor([[[-1.0, -1.0]], [[-1.0, 1.0]], [[1.0, -1.0]], [[1.0, 1.0]]])
    out = q(z)
    assert sorted(out.indices.flatten().tolist()) == [0, 1, 2, 3]
    assert float(out.usage) == 1.0 and float(out.perplexity) == pytest.approx(4.0)
    assert q.revive_dead_codes() == 0


# ----------------------------------------------------------------------------- in the model


def tiny(**kw) -> ModelConfig:
    base = dict(in_channels=4, latent_size=16, patch_dim=16, patch_grid=4, embed_dim=32, num_heads=2,
                encoder_depth=1, decoder_depth=1, num_embeddings=12, num_codes=3, max_frames=8)
    return ModelConfig(**{**base, **kw})


def test_fsq_model_shapes_ids_and_gradients():
    cfg = tiny(fsq=True, standardize_z=True)
    assert cfg.code_dim == 2 and cfg.num_actions == 12**3
    torch.manual_seed(0)
    model = VVAELatentActionVQVAE(cfg).train()
    x = torch.randn(4, 3, 4, 16, 16)
    out = model(x)
    assert out.indices.shape == (4, 2, 3) and int(out.indices.max()) < 12
    out.loss.backward()
    assert model.encoder.to_action.weight.grad.abs().sum() > 0  # the encoder learns through the codes
    model.eval()
    idx, z = model.encode_actions(x)
    assert z.shape == (4, 2, 3, 2)
    pred = model.decode_with_actions(x, idx)
    assert pred.shape == (4, 2, 4, 16, 16)
    ids = model.action_ids(idx)
    assert torch.equal(model.action_ids_to_indices(ids), idx)
    state = model.state_dict()
    assert {"z_norm.mean", "z_norm.cov"} <= set(state)
    VVAELatentActionVQVAE(cfg).load_state_dict(state)


@pytest.mark.parametrize("knobs", [
    dict(),
    dict(standardize_z=True, diff_motion_stem=True, motion_to_code=True, motion_moments=True),  # the demo recipe
], ids=["fsq", "demo-recipe"])
def test_compiled_fsq_model_keeps_its_loss_graph_and_gradients(knobs):
    """Two torch.compile (inductor, torch 2.13) failures with FSQ, both fixed in the model:
    - the model added FSQ's constant-zero auxiliary loss, and `y + y.new_zeros(())` returned
      beside `y.detach()` came back without a grad_fn; a loss that does not exist is now left out;
    - the whitening penalty was kept as a module attribute, which made it a graph output of its
      own, and the compiled backward failed on its missing gradient; it is now returned."""
    torch.manual_seed(0)
    model = VVAELatentActionVQVAE(tiny(fsq=True, num_codes=1, num_embeddings=9, **knobs)).train()
    x = torch.randn(2, 3, 4, 16, 16)
    eager = model(x)
    eager.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled = torch.compile(model)(x)
    assert compiled.loss.grad_fn is not None
    compiled.loss.backward()
    torch.testing.assert_close(compiled.loss, eager.loss, atol=1e-5, rtol=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-4, rtol=1e-3, msg=name)


def test_encode_actions_changes_no_state_even_in_train_mode():
    model = VVAELatentActionVQVAE(tiny(fsq=True, standardize_z=True)).train()
    x = torch.randn(4, 3, 4, 16, 16)
    model(x)  # one training forward: running statistics move away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx_train, z_train = model.encode_actions(torch.randn(4, 3, 4, 16, 16) * 3 + 1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    x2 = torch.randn(2, 3, 4, 16, 16)
    idx_train, z_train = model.encode_actions(x2)
    idx_eval, z_eval = model.eval().encode_actions(x2)  # same answer as in evaluation
    assert torch.equal(idx_train, idx_eval) and torch.allclose(z_train, z_eval)


def test_vq_model_with_standardize_z():
    model = VVAELatentActionVQVAE(tiny(standardize_z=True, codebook_dim=8)).train()
    out = model(torch.randn(4, 3, 4, 16, 16))
    out.loss.backward()
    assert out.indices.shape == (4, 2, 3)


# ----------------------------------------------------------------------------- standardisation


def test_whitening_uses_batch_statistics_in_training_and_running_ones_in_eval():
    norm = RunningStandardize(num_codes=2, dim=3, momentum=0.5)
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
    expected = norm._whiten(z, *before)
    torch.testing.assert_close(ev, expected)
    assert torch.equal(norm.mean, before[0]) and torch.equal(norm.cov, before[1])  # eval changes nothing


def test_whitening_with_one_dim_is_batch_norm():
    norm = RunningStandardize(num_codes=1, dim=1, eps=0.0).train()
    z = torch.randn(100, 1, 1) * 3 + 2
    torch.testing.assert_close(norm(z)[0], (z - z.mean()) / z.std(unbiased=False), atol=1e-4, rtol=0)


def test_standardize_gradient_goes_through_the_statistics():
    norm = RunningStandardize(num_codes=1, dim=1).train()
    z = torch.randn(32, 1, 1, requires_grad=True)
    norm(z)[0].sum().backward()  # the sum of standardised values is always 0: no gradient
    torch.testing.assert_close(z.grad, torch.zeros_like(z), atol=1e-5, rtol=0)


WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        z = torch.randn(2 * WORLD, 3, 2, 4, generator=torch.Generator().manual_seed(5))
        z[2:] += 3.0  # rank 1's data differs
        mine = z[2 * rank : 2 * rank + 2].clone().requires_grad_()
        norm = RunningStandardize(num_codes=2, dim=4).train()
        weight = torch.arange(mine.numel(), dtype=torch.float32).reshape(mine.shape)
        out, _ = norm(mine)
        (out * weight).sum().backward()
        torch.save({"out": out.detach(), "grad": mine.grad, "mean": norm.mean, "cov": norm.cov},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_standardize_over_two_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_gloo_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    z = torch.randn(2 * WORLD, 3, 2, 4, generator=torch.Generator().manual_seed(5))
    z[2:] += 3.0
    z.requires_grad_()
    norm = RunningStandardize(num_codes=2, dim=4).train()
    out, _ = norm(z)
    weight = torch.cat([torch.arange(z[:2].numel(), dtype=torch.float32).reshape(z[:2].shape)] * WORLD)
    (out * weight).sum().backward()
    for r, res in enumerate(results):
        torch.testing.assert_close(res["out"], out.detach()[2 * r : 2 * r + 2])
        torch.testing.assert_close(res["grad"], z.grad[2 * r : 2 * r + 2], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(res["mean"], norm.mean)  # running stats identical on every rank
        torch.testing.assert_close(res["cov"], norm.cov)


def test_standardize_penalty_pins_the_raw_statistics():
    norm = RunningStandardize(num_codes=1, dim=2).train()
    z = torch.randn(4096, 1, 2, generator=torch.Generator().manual_seed(3))
    z = (z - z.mean(0)) / z.std(0, unbiased=False)  # already mean 0, variance 1
    assert float(norm(z)[1]) < 1e-3  # float32 log-det round-off and eps
    assert float(norm(z * 0.1 + 4.5)[1]) > 10  # 4.5^2 + 0.01 - log(0.01) - 1, per dim
    assert norm.eval()(z)[1] is None
    # in the model, the penalty is part of vq_loss (FSQ has no other quantiser loss)
    torch.manual_seed(0)
    model = VVAELatentActionVQVAE(tiny(fsq=True, standardize_z=True)).train()
    out = model(torch.randn(4, 3, 4, 16, 16))
    torch.testing.assert_close(out.metrics["loss"] - out.metrics["mse_loss"], out.metrics["vq_loss"])
    assert float(out.metrics["vq_loss"]) > 0


@pytest.mark.parametrize("knobs", [
    dict(diff_motion_stem=True),
    dict(diff_motion_stem=True, motion_to_code=True),
    dict(diff_motion_stem=True, motion_code_only=True, fsq=True, standardize_z=True, num_codes=1, num_embeddings=9),
    dict(motion_code_only=True),
], ids=["diff-stem", "motion-to-code", "motion-only-fsq", "motion-only-pair-stem"])
def test_motion_stem_variants_train_every_parameter_and_stay_causal(knobs):
    cfg = tiny(**knobs)
    torch.manual_seed(0)
    model = VVAELatentActionVQVAE(cfg).train()
    x = torch.randn(4, 4, 4, 16, 16)
    out = model(x)
    out.loss.backward()
    # every parameter gets a gradient (DDP without find_unused_parameters needs this)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    idx, z = model.encode_actions(x)
    # the action of t-1 -> t never depends on later frames
    x2 = x.clone()
    x2[:, 3] += 5.0
    idx2, z2 = model.encode_actions(x2)
    torch.testing.assert_close(z[:, :2], z2[:, :2])
    if knobs.get("motion_code_only") and knobs.get("diff_motion_stem"):
        # codes from frame differences only: blind to a static background added to every frame
        x3 = x + torch.randn(1, 1, 4, 16, 16)
        torch.testing.assert_close(model.encode_actions(x3)[1], z, atol=1e-4, rtol=1e-4)


def test_encoder_head_view_has_the_same_value_and_no_gradient_into_the_body():
    cfg = tiny(diff_motion_stem=True, motion_to_code=True, fsq=True, standardize_z=True)
    torch.manual_seed(0)
    model = VVAELatentActionVQVAE(cfg).train()
    patches = model.in_adapter(torch.randn(2, 3, 4, 16, 16))
    z, z_head = model.encoder(patches, head_view=True)
    torch.testing.assert_close(z, z_head)
    torch.testing.assert_close(model.encoder(patches), z)
    z_head.sum().backward()
    assert model.encoder.to_action.weight.grad is not None and model.encoder.motion_to_code.weight.grad is not None
    assert model.encoder.motion[0].weight.grad is None and model.encoder.proj_in.weight.grad is None


def test_motion_moments_are_linear_in_displacement_and_blind_to_background():
    cfg = tiny(diff_motion_stem=True, motion_moments=True, motion_to_code=True, patch_dim=8)
    torch.manual_seed(0)
    enc = VVAELatentActionVQVAE(cfg).encoder.eval()
    coords = enc.patch_coords  # (N, 2), patch grid 4x4 in [-1, 1]
    assert coords.shape == (16, 2) and float(coords.min()) == -1.0 and float(coords.max()) == 1.0
    seen = []
    enc.moment_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))

    blob = torch.zeros(16, 8)
    blob[5, 0] = 1.0  # one object (channel 0) in patch (row 1, col 1)
    moved_right, moved_down = torch.zeros(16, 8), torch.zeros(16, 8)
    moved_right[6, 0] = 1.0  # one patch to the right
    moved_down[9, 0] = 1.0  # one patch down
    background = torch.randn(16, 8)
    step = 2.0 / 3  # grid spacing in [-1, 1] for 4 patches
    for after, axis in ((moved_right, 1), (moved_down, 0)):
        seen.clear()
        enc(torch.stack([blob + background, after + background])[None])
        feats = seen[0][0, 0]  # (3P,): y-moments (P), x-moments (P), mean change (P)
        moments = feats[: 2 * 8].view(2, 8)
        torch.testing.assert_close(moments[axis, 0], torch.tensor(step / 16))  # the object's shift / N
        torch.testing.assert_close(moments[1 - axis, 0], torch.tensor(0.0))
        torch.testing.assert_close(moments[:, 1:], torch.zeros(2, 7))  # other channels: the background cancels
        torch.testing.assert_close(feats[2 * 8 :], torch.zeros(8))  # total mass unchanged
