"""The FSQ bottleneck: levels, rounding onto the grid, ids, gradients; in the model, and under torch.compile."""

from __future__ import annotations

import pytest
import torch
from helpers import small_model_config

from lam.model import LatentActionModel
from lam.model.quantize import FiniteScalarQuantizer, fsq_levels_for


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
    assert out.losses == {} and out.loss is None and q.loss_names == ()  # FSQ needs no auxiliary loss


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


# ----------------------------------------------------------------------------- in the model


def test_fsq_model_shapes_ids_and_gradients():
    cfg = small_model_config(quantizer="fsq", whiten=True, num_embeddings=12)
    torch.manual_seed(0)
    model = LatentActionModel(cfg).train()
    assert model.quantizer.code_dim == 2 and cfg.num_actions == 12**3
    x = torch.randn(4, 3, 4, 16, 16)
    out = model(x)
    assert out.indices.shape == (4, 2, 3) and int(out.indices.max()) < 12
    out.loss.backward()
    assert model.encoder.head.to_action.weight.grad.abs().sum() > 0  # the encoder learns through the codes
    model.eval()
    idx, z = model.encode_actions(x)
    assert z.shape == (4, 2, 3, 2)
    pred = model.decode_with_actions(x, idx)
    assert pred.shape == (4, 2, 4, 16, 16)
    ids = model.action_ids(idx)
    assert torch.equal(model.action_ids_to_indices(ids), idx)
    state = model.state_dict()
    assert {"whiten.mean", "whiten.cov"} <= set(state)
    LatentActionModel(cfg).load_state_dict(state)


@pytest.mark.slow  # inductor compiles the model for a while on CPU
@pytest.mark.parametrize("parts", [
    dict(),
    dict(whiten=True, stem="diff", action_head="token+motion", motion_moments="patches"),  # the demo recipe's
], ids=["fsq", "demo-recipe"])
def test_compiled_fsq_model_keeps_its_loss_graph_and_gradients(parts):
    """Two torch.compile (inductor) failures with FSQ that the model avoids:
    - a constant-zero auxiliary loss added to the loss (`y + y.new_zeros(())` returned beside
      `y.detach()`) came back without a grad_fn; a loss that does not exist is left out;
    - the whitening penalty kept as a module attribute became a graph output of its own, and
      the compiled backward failed on its missing gradient; it is returned instead."""
    torch.manual_seed(0)
    cfg = small_model_config(quantizer="fsq", num_codes=1, num_embeddings=9, encoder_depth=1, decoder_depth=1, **parts)
    model = LatentActionModel(cfg).train()
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
