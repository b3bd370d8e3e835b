"""The latent action model: config, parts by name, adapters, shapes/dtypes, causality (no leakage) over every
combination of parts, rollout, ids."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import small_model_config

import lam.config
from lam.config import MultistepSettings, VQSettings, apply_overrides
from lam.model import (
    CORRELATIONS, FORWARD_TARGETS, HEADS, MOMENTS, PREDICTIONS, QUANTIZERS, STEMS, LAMOutput, LAMtoVVAEAdapter, LatentActionModel, ModelConfig, VVAELatentActionVQVAE,
    VVAEtoLAMAdapter,
)

SPEC_METRICS = {
    "loss", "loss/prediction", "loss/bottleneck", "mse_loss", "mae_loss", "vq_loss", "codebook_loss", "commitment_loss", "codebook_usage", "perplexity",
}
# Every combination of the model's parts: stem x action head x quantizer, each bare and with
# the whitening, the motion moments, a frame correlation and a shifted prediction (both moments,
# phase+change and shifted-local with the diff stem; pixel moments, cross and shifted with the pair
# stem), the (opt-in) label head, the moments loss, the moved-pixels loss, the forward model
# in a learned latent space and a frame offset of 2 on.
PARTS = [
    dict(stem=stem, action_head=head, quantizer=quantizer, whiten=extras,
         motion_moments=("patches+pixels" if stem == "diff" else "pixels") if extras else "none",
         frame_correlation=("phase+change" if stem == "diff" else "cross") if extras else "none",
         prediction=("shifted-local" if stem == "diff" else "shifted") if extras else "residual",
         label_classes=3 if extras else 0, moments_weight=0.5 if extras else 0.0, motion_weight=1.0 if extras else 0.0,
         forward_target="pixels+latent" if extras else "pixels", action_offset=2 if extras else 1)
    for stem, head, quantizer, extras in itertools.product(STEMS, HEADS, QUANTIZERS, (False, True))
]


def part_id(p: dict) -> str:
    extras = f"-whiten-{p['motion_moments']}-{p['frame_correlation']}-{p['prediction']}-labels-moments-moved-latent-loss-offset2" if p["whiten"] else ""
    return f"{p['stem']}-{p['action_head']}-{p['quantizer']}{extras}"


PART_IDS = [part_id(p) for p in PARTS]
every_combination = pytest.mark.parametrize("parts", PARTS, ids=PART_IDS)


def make_model(cfg: ModelConfig, seed: int = 0) -> LatentActionModel:
    """A model in eval mode whose decoder output is not zero.

    The decoder's output projection starts at zero (an untrained model copies the previous
    frame), which would make every "does not depend on" check pass trivially.
    """
    torch.manual_seed(seed)
    model = LatentActionModel(cfg)
    torch.nn.init.normal_(model.decoder.proj_out.weight, std=0.5)
    if model.shift is not None:  # likewise, the shift starts blended out and uniform
        torch.nn.init.constant_(model.shift.gate, 0.5 / model.shift.RATE)
        torch.nn.init.normal_(model.shift.to_shift.weight, std=0.1)
    if model.quantizer.continuous:  # centroids from k-means: before a fit every id would be the zero vector
        model.quantizer.remember(torch.randn(64, cfg.num_codes, model.quantizer.code_dim))
        model.quantizer.fit_centroids()
    return model.eval()


def frames(cfg: ModelConfig, b: int, t: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, cfg.in_channels, cfg.latent_size, cfg.latent_size, generator=g)


def random_indices(cfg: ModelConfig, b: int, steps: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.num_embeddings, (b, steps, cfg.num_codes), generator=g)


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_the_spec():
    c = ModelConfig()
    assert (c.patch_dim, c.num_patches, c.embed_dim, c.encoder_depth, c.decoder_depth) == (256, 256, 512, 3, 3)
    assert c.quantizer_settings == VQSettings(codebook_dim=128, commitment_weight=0.25, dead_code_steps=100)
    assert (c.num_embeddings, c.num_codes) == (12, 3)
    assert (c.stem, c.action_head, c.quantizer, c.whiten, c.motion_moments, c.frame_correlation, c.prediction) == \
        ("pair", "token", "vq", False, "none", "none", "residual")
    assert c.num_actions == 1728 and c.rollout == "none" and MultistepSettings().rollout_horizon == 2 and c.patch_size == 4
    c.validate()


def test_built_with_no_arguments_it_is_the_spec_model_under_both_names():
    assert VVAELatentActionVQVAE is LatentActionModel
    model = LatentActionModel()
    assert model.config == ModelConfig()
    assert sum(p.numel() for p in model.parameters()) == 27_004_304
    assert set(model.metric_names) == SPEC_METRICS


def test_every_name_the_config_accepts_names_a_class_in_the_registries():
    assert tuple(STEMS) == lam.config.STEMS
    assert tuple(CORRELATIONS) == lam.config.CORRELATIONS
    assert tuple(MOMENTS) == lam.config.MOMENTS
    assert tuple(PREDICTIONS) == lam.config.PREDICTIONS
    assert tuple(FORWARD_TARGETS) == lam.config.FORWARD_TARGETS
    assert tuple(HEADS) == lam.config.ACTION_HEADS
    assert tuple(QUANTIZERS) == lam.config.QUANTIZERS


def test_a_registry_that_differs_from_the_declared_names_fails_on_import():
    with pytest.raises(TypeError, match=r"stem registry names \['pair'\], the config declares \['pair', 'diff'\]"):
        lam.config.STEM.registry({"pair": object})
    with pytest.raises(TypeError, match="action_head registry names"):
        lam.config.ACTION_HEAD.registry({"motion": 1, "token": 2, "token+motion": 3})  # the order is the help's order too


@pytest.mark.parametrize("field, valid", [("stem", "pair, diff"), ("motion_moments", "none, patches, pixels, patches+pixels"), ("frame_correlation", "none, phase, cross, change, phase+change"), ("prediction", "residual, shifted, shifted-local"), ("action_head", "token, token+motion, motion"), ("quantizer", "vq, fsq, gaussian")])
def test_an_unknown_part_is_a_one_line_error_listing_the_valid_names(field, valid):
    with pytest.raises(ValueError, match=re.escape(f"model.{field} must be one of {valid}; got 'nope'")):
        LatentActionModel(ModelConfig(**{field: "nope"}))


@pytest.mark.parametrize("quantizer", lam.config.QUANTIZERS)
def test_config_round_trips_through_its_flat_dict_and_yaml(quantizer):
    yaml = pytest.importorskip("yaml")
    c = lam.config.RunConfig()
    apply_overrides(c, {"embed_dim": 256, "rollout": "multistep", "rollout_weight": 0.5, "stem": "diff", "quantizer": quantizer}, "test")
    d = c.to_dict()["model"]
    assert all(type(v) in (int, float, bool, str) for v in d.values())  # the quantizer's settings are flat keys
    chosen = (c.model.quantizer_settings, c.model.forward_target_settings, c.model.rollout_settings)
    assert {key for key in d if key not in {f.name for f in dataclasses.fields(ModelConfig)}} == \
        {f.name for settings in chosen for f in dataclasses.fields(settings)}
    assert "rollout_horizon" in d and "latent_ema" not in d
    assert lam.config.RunConfig.from_dict({"model": yaml.safe_load(yaml.safe_dump(d))}).model == c.model


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(embed_dim=100, num_heads=8), "num_heads"),
        (dict(latent_size=64, patch_grid=10), "patch_grid"),
        (dict(num_embeddings=0), "num_embeddings"),
        (dict(quantizer_settings=VQSettings(commitment_weight=-1.0)), "commitment_weight"),
        (dict(quantizer_settings=VQSettings(dead_code_steps=-1)), "dead_code_steps"),
        (dict(quantizer="fsq", quantizer_settings=VQSettings()), "quantizer_settings must be FSQSettings, the settings of quantizer fsq"),
        (dict(max_frames=1), "max_frames"),
        (dict(rollout="multistep", rollout_settings=MultistepSettings(rollout_horizon=8), max_frames=8), "rollout_horizon"),
    ],
)
def test_config_validate_rejects_impossible_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides).validate()
    with pytest.raises(ValueError, match=message):
        LatentActionModel(ModelConfig(**overrides))


# ----------------------------------------------------------------------------- adapters


def test_adapters_default_shapes_per_frame():
    torch.manual_seed(0)
    to_lam, to_vvae = VVAEtoLAMAdapter(), LAMtoVVAEAdapter()
    x = torch.randn(2, 3, 16, 64, 64)
    patches = to_lam(x)
    assert patches.shape == (2, 3, 256, 256)
    assert to_vvae(patches).shape == x.shape
    # Per frame: adapting one frame alone gives the same patches.
    torch.testing.assert_close(to_lam(x[1, 2]), patches[1, 2])
    # Patches are row-major over the 16x16 grid: patch 17 = grid cell (1, 1) = pixels [4:8, 4:8].
    y = torch.zeros(1, 16, 64, 64)
    y[..., 4:8, 4:8] = 1.0
    changed = (to_lam(y) - to_lam(torch.zeros_like(y))).abs().sum(-1)[0]  # (N,)
    assert changed.nonzero().flatten().tolist() == [17]


# ----------------------------------------------------------------------------- shapes / dtypes


def test_default_config_forward_backward():
    # In fp32 only: bf16 autocast is checked on the small configs below, and on the default
    # model by the GPU check, because CPUs without native bf16 take a minute over this one.
    cfg = ModelConfig()
    model = make_model(cfg).train()
    x = frames(cfg, b=1, t=3)
    out = model(x)
    assert isinstance(out, LAMOutput)
    assert out.predictions.shape == (1, 2, 16, 64, 64)
    assert out.indices.shape == (1, 2, 3) and out.indices.dtype == torch.long
    assert set(out.metrics) == SPEC_METRICS
    assert out.loss.ndim == 0 and out.loss.requires_grad and torch.isfinite(out.loss)
    out.loss.backward()
    # gradients that are there and not zero: the encoder learns from the loss, and the codebook
    # entries the batch used move (codebook loss), the others do not
    assert model.encoder.head.proj_in.weight.grad.abs().sum() > 0
    moved = model.quantizer.codebook.grad.abs().sum(-1) > 0  # (K, M): which entries got a gradient
    used = torch.zeros_like(moved)
    used[torch.arange(3)[:, None], out.indices.reshape(-1, 3).t()] = True
    assert torch.equal(moved, used)


@pytest.mark.parametrize("rollout", [False, True], ids=["no-rollout", "rollout"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_tiny_config_outputs(rollout, bf16):
    cfg = small_model_config(rollout="multistep" if rollout else "none", **({"rollout_horizon": 2} if rollout else {}))
    model = make_model(cfg).train()
    x = frames(cfg, b=2, t=5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    assert out.predictions.shape == (2, 4, 4, 16, 16)
    assert out.indices.shape == (2, 4, 3) and out.indices.dtype == torch.long
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < cfg.num_embeddings
    assert set(out.metrics) == SPEC_METRICS | ({"rollout_loss", "loss/rollout"} if rollout else set())
    assert list(out.metrics) != [] and set(out.metrics) == set(model.metric_names)
    for name, value in out.metrics.items():
        assert value.ndim == 0 and not value.requires_grad and value.dtype == torch.float32, name
        assert torch.isfinite(value), name
    # loss = mse + vq (+ weight * rollout)
    expected = out.metrics["mse_loss"] + out.metrics["vq_loss"]
    if rollout:
        expected = expected + cfg.rollout_settings.rollout_weight * out.metrics["rollout_loss"]
    torch.testing.assert_close(out.metrics["loss"], expected)
    torch.testing.assert_close(out.loss.detach(), out.metrics["loss"])
    out.loss.backward()


def test_untrained_model_copies_the_previous_frame():
    cfg = small_model_config()
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()
    x = frames(cfg, b=1, t=4)
    bias = model.out_adapter.deconv.bias.view(1, 1, -1, 1, 1)
    torch.testing.assert_close(model(x).predictions, x[:, :-1] + bias)


def test_rejects_bad_inputs():
    cfg = small_model_config()
    model = make_model(cfg)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(1, 3, 4, 8, 8))
    with pytest.raises(ValueError, match="frames"):
        model(frames(cfg, b=1, t=1))
    with pytest.raises(ValueError, match="frames"):
        model(frames(cfg, b=1, t=cfg.max_frames + 1))
    with pytest.raises(ValueError, match="indices"):
        model.decode_with_actions(frames(cfg, b=1, t=3), random_indices(cfg, b=1, steps=3))
    with pytest.raises(ValueError, match="0..4"):
        model.decode_with_actions(frames(cfg, b=1, t=3), torch.full((1, 2, 3), cfg.num_embeddings))
    with pytest.raises(ValueError, match="at least 4 frames"):
        make_model(small_model_config(rollout="multistep", rollout_horizon=3))(frames(cfg, b=1, t=3))


# ----------------------------------------------------------------------------- causality


@every_combination
def test_decoder_never_sees_the_target_frame(parts):
    """With actions given from outside, the prediction of frame t ignores frames >= t."""
    cfg = small_model_config(**parts)
    model = make_model(cfg)
    t_len = 6
    x = frames(cfg, b=2, t=t_len)
    idx = random_indices(cfg, b=2, steps=t_len - 1)
    with torch.no_grad():
        base = model.decode_with_actions(x, idx)  # index t-1 predicts frame t
        for t in range(1, t_len):
            x2 = x.clone()
            x2[:, t:] = torch.randn_like(x2[:, t:]) * 3
            pred = model.decode_with_actions(x2, idx)
            torch.testing.assert_close(pred[:, :t], base[:, :t], rtol=0, atol=1e-5)  # frames 1..t
            if t < t_len - 1:  # the check is not vacuous: frame t does reach the prediction of frame t+1
                assert (pred[:, t] - base[:, t]).abs().max() > 1e-2


@every_combination
def test_decoder_prediction_depends_on_its_action_only_from_then_on(parts):
    cfg = small_model_config(**parts)
    model = make_model(cfg)
    x = frames(cfg, b=1, t=5)
    idx = random_indices(cfg, b=1, steps=4)
    with torch.no_grad():
        base = model.decode_with_actions(x, idx)
        idx2 = idx.clone()
        idx2[:, 2] = (idx2[:, 2] + 1) % cfg.num_embeddings  # the action of 2 -> 3
        pred = model.decode_with_actions(x, idx2)
    torch.testing.assert_close(pred[:, :2], base[:, :2], rtol=0, atol=1e-5)  # frames 1, 2
    assert (pred[:, 2] - base[:, 2]).abs().max() > 1e-2  # frame 3 uses it


@every_combination
def test_frame_t_minus_1_of_decode_input_is_never_read(parts):
    cfg = small_model_config(**parts)
    model = make_model(cfg)
    x = frames(cfg, b=1, t=4)
    idx = random_indices(cfg, b=1, steps=3)
    x2 = x.clone()
    x2[:, -1] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(model.decode_with_actions(x2, idx), model.decode_with_actions(x, idx))


@every_combination
def test_inferred_action_sees_frames_up_to_t_only(parts):
    """z_pre of t-1 -> t changes with frame t (and t-1, or t-k with action_offset k), never with frames > t."""
    cfg = small_model_config(**parts)
    model = make_model(cfg)
    t_len = 6
    x = frames(cfg, b=2, t=t_len)
    with torch.no_grad():
        _, z = model.encode_actions(x)  # (B, T-1, K, D), index t-1 = transition t-1 -> t
        for t in range(1, t_len):
            x2 = x.clone()
            x2[:, t] = torch.randn_like(x2[:, t]) * 3
            _, z2 = model.encode_actions(x2)
            torch.testing.assert_close(z2[:, : t - 1], z[:, : t - 1], rtol=0, atol=1e-5)  # earlier transitions
            assert (z2[:, t - 1] - z[:, t - 1]).abs().max() > 1e-3  # its own transition sees frame t
            later = t + cfg.action_offset - 1  # frame t is what the action of t+k-1 -> t+k compares with (k = action_offset)
            if later < t_len - 1:
                assert (z2[:, later] - z[:, later]).abs().max() > 1e-3


@every_combination
def test_every_parameter_learns_and_the_metrics_are_the_ones_named(parts):
    """DDP (without find_unused_parameters) needs a gradient for every parameter it trains; the
    latent forward model's target encoder is the one part that learns without (a moving average)."""
    cfg = small_model_config(**parts)
    model = make_model(cfg).train()
    out = model(frames(cfg, b=4, t=4))
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == [
        n for n, _ in model.named_parameters() if n.startswith("latent.target.")]
    assert list(out.metrics) and set(out.metrics) == set(model.metric_names)
    assert ("codebook_loss" in out.metrics) == (parts["quantizer"] == "vq")
    # the loss is its named terms, each weighted once, and nothing else
    assert list(out.terms) and set(out.terms) <= set(model.loss_terms)
    torch.testing.assert_close(out.loss, sum(out.terms.values()))
    torch.testing.assert_close(out.metrics["loss"], sum(out.metrics[f"loss/{term}"] for term in model.loss_terms))


# ----------------------------------------------------------------------------- consistency of the entry points


@every_combination
def test_forward_agrees_with_encode_and_decode(parts):
    cfg = small_model_config(**parts)
    model = make_model(cfg)
    x = frames(cfg, b=2, t=5)
    with torch.no_grad():
        out = model(x)
        idx, z = model.encode_actions(x)
        pred = model.decode_with_actions(x, idx)
    assert torch.equal(out.indices, idx)
    assert z.shape == (2, 4, cfg.num_codes, model.quantizer.code_dim) and z.dtype == torch.float32
    if model.quantizer.continuous:  # in evaluation the decoder gets the vectors themselves
        torch.testing.assert_close(out.predictions, model.decode_with_vectors(x, z), rtol=1e-4, atol=1e-5)
        assert (pred - out.predictions).abs().max() > 1e-4  # ids stand for centroids, not the vectors
        return
    # forward's decoder gets z + (q - z), equal to q up to float rounding
    torch.testing.assert_close(out.predictions, pred, rtol=1e-4, atol=1e-5)


def test_rollout_one_step_is_teacher_forcing_and_feeds_predictions_back():
    cfg = small_model_config()
    model = make_model(cfg)
    x = frames(cfg, b=2, t=6)
    idx = random_indices(cfg, b=2, steps=5)
    t0, h = 2, 3
    with torch.no_grad():
        teacher = model.decode_with_actions(x, idx)  # index t-1 predicts frame t
        rolled = model.rollout(x[:, : t0 + 1], idx[:, t0 : t0 + h], h, context_indices=idx[:, :t0])
        assert rolled.shape == (2, h, 4, 16, 16)  # frames t0+1 .. t0+h
        torch.testing.assert_close(rolled[:, 0], teacher[:, t0], rtol=1e-5, atol=1e-5)
        # Step 2 equals teacher forcing on a window whose frame t0+1 is the model's own prediction.
        x_fed = x.clone()
        x_fed[:, t0 + 1] = rolled[:, 0]
        torch.testing.assert_close(rolled[:, 1], model.decode_with_actions(x_fed, idx)[:, t0 + 1], rtol=1e-5, atol=1e-5)
        assert (rolled[:, 1] - teacher[:, t0 + 1]).abs().max() > 1e-3  # and it is not teacher forcing
        # Without context_indices the context actions are inferred from x by the encoder
        # (by causality the same codes as those inferred from the whole window).
        inferred = model.encode_actions(x[:, : t0 + 1])[0]
        assert torch.equal(inferred, model.encode_actions(x)[0][:, :t0])
        torch.testing.assert_close(
            model.rollout(x[:, : t0 + 1], idx[:, t0 : t0 + h], h),
            model.rollout(x[:, : t0 + 1], idx[:, t0 : t0 + h], h, context_indices=inferred),
        )
        # A single ground-truth frame is enough context.
        assert model.rollout(x[:, :1], idx[:, :2], 2).shape == (2, 2, 4, 16, 16)


def test_rollout_loss_is_the_mse_of_a_rollout_with_the_inferred_actions():
    h = 2
    cfg = small_model_config(rollout="multistep", rollout_horizon=h, rollout_weight=0.5)
    model = make_model(cfg)
    x = frames(cfg, b=2, t=5)
    with torch.no_grad():
        out = model(x)
        t0 = x.shape[1] - 1 - h
        rolled = model.rollout(x[:, : t0 + 1], out.indices[:, t0:], h, context_indices=out.indices[:, :t0])
    torch.testing.assert_close(out.metrics["rollout_loss"], F.mse_loss(rolled, x[:, t0 + 1 :]), rtol=1e-4, atol=1e-6)


def test_action_ids_are_mixed_radix_and_invertible():
    cfg = small_model_config(num_embeddings=12, num_codes=3)
    model = make_model(cfg)
    idx = torch.tensor([[[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [11, 11, 11], [3, 7, 5]]])
    ids = model.action_ids(idx)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[0, 1, 12, 144, 1727, 3 * 144 + 7 * 12 + 5]]
    assert torch.equal(model.action_ids_to_indices(ids), idx)


def test_state_dict_round_trip_carries_quantizer_state():
    cfg = small_model_config(dead_code_steps=3)
    model = make_model(cfg).train()
    model(frames(cfg, b=2, t=4))  # updates the revival buffers
    state = model.state_dict()
    for name in ("steps_since_used", "recent", "recent_count", "revive_calls"):
        assert f"quantizer.{name}" in state
    clone = LatentActionModel(cfg)
    clone.load_state_dict(state)
    for name, value in clone.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_flop_count_covers_the_model():
    from lam.model.flops import count_flops

    flops = count_flops(small_model_config(), frames=4)
    parts = sum(flops[k] for k in ("encoder", "decoder", "in_adapter", "out_adapter", "quantizer"))
    assert flops["total"] > 0 and parts == pytest.approx(flops["total"], rel=1e-6)
    with_backward = count_flops(small_model_config(), frames=4, backward=True)["total"]
    assert 2 * flops["total"] < with_backward < 4 * flops["total"]


def test_attention_over_more_sequences_than_one_kernel_launch_takes_is_sliced_with_the_same_result(monkeypatch):
    from lam.model import transformer

    torch.manual_seed(0)
    block = transformer.SpaceTimeBlock(dim=16, num_heads=2, mlp_ratio=2.0)
    x = torch.randn(3, 4, 5, 16, requires_grad=True)  # spatial: 12 sequences, temporal: 15
    whole = block(x)
    (grad_whole,) = torch.autograd.grad(whole.square().sum(), x)
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counted(q, *args, **kwargs):
        calls.append(q.shape[0])
        return real_sdpa(q, *args, **kwargs)

    monkeypatch.setattr(transformer, "MAX_SEQUENCES_PER_CALL", 4)
    monkeypatch.setattr(transformer.F, "scaled_dot_product_attention", counted)
    sliced = block(x)
    (grad_sliced,) = torch.autograd.grad(sliced.square().sum(), x)
    assert calls == [4, 4, 4, 4, 4, 4, 3] and max(calls) <= 4  # 12 spatial sequences in 3 calls, 15 temporal in 4
    torch.testing.assert_close(sliced, whole)
    torch.testing.assert_close(grad_sliced, grad_whole)


def test_the_moved_pixels_loss_averages_each_transitions_moved_pixels_on_their_own():
    from lam.model.moved import moved_error, moved_mask

    x = torch.zeros(2, 3, 4, 16, 16)
    x[0, 1:, :, 2:4, 2:4] = 1.0  # window 0: a 2x2 object appears at t=1 (and stays at t=2)
    x[0, 1:, :, 10, 10] = 0.1  # and a faint flicker that is not what moved
    x[1, 1:, :, :, :8] = 1.0  # window 1: half the view changes at t=1
    x[1, 2, :, :, :8] = 0.0  # and changes back at t=2
    mask = moved_mask(x)
    assert mask.shape == (2, 2, 16, 16)
    assert mask[0, 0].sum() == 4 and mask[0, 0, 2:4, 2:4].all() and mask[0, 1].sum() == 0  # nothing moved at t=2
    assert mask[1, 0].sum() == 128 and mask[1, 1].sum() == 128
    err = torch.zeros(2, 2, 4, 16, 16)
    err[0, 0, :, 2:4, 2:4] = 2.0  # the small object is missed entirely
    err[0, 0, :, 8:, 8:] = 5.0  # errors where nothing moved do not count here
    # transition (0, 0): 4.0 over its moved pixels; (1, 0) and (1, 1): 0; (0, 1) has nothing moved
    assert float(moved_error(err, x)) == pytest.approx(4.0 / 3)
    # the plain MSE barely sees the missed object; the moved term weighs it like a whole view
    assert float(err[:, :, :, 2:4, 2:4].pow(2).sum() / err.numel()) < 0.05

    torch.manual_seed(0)
    off = LatentActionModel(small_model_config())
    on = LatentActionModel(small_model_config(motion_weight=2.0))
    on.load_state_dict(off.state_dict())
    frames = torch.randn(2, 3, 4, 16, 16)
    a, b = off(frames), on(frames)
    assert "moved_loss" in b.metrics and "moved_loss" not in a.metrics
    assert torch.equal(a.predictions, b.predictions)  # a loss term only: predictions unchanged
    assert torch.allclose(b.loss - a.loss, 2.0 * b.metrics["moved_loss"])


def test_the_latent_forward_model_trains_its_online_encoder_and_moves_its_target_slowly():
    torch.manual_seed(0)
    model = LatentActionModel(small_model_config(forward_target="pixels+latent", latent_ema=0.9, quantizer="gaussian"))
    latent = model.latent
    assert all(torch.equal(t, o) for t, o in zip(latent.target.parameters(), latent.online.parameters()))  # starts as a copy
    assert not any(p.requires_grad for p in latent.target.parameters())
    assert {"latent_loss", "latent_spread"} <= set(model.metric_names)
    x = torch.randn(3, 4, 4, 16, 16)
    out = model(x)
    assert 0 < float(out.metrics["latent_loss"]) <= 4 and float(out.metrics["latent_spread"]) >= 0
    out.loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in latent.online.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in latent.target.parameters())  # the target learns by moving average only
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    optimizer.step()
    before = [t.clone() for t in latent.target.parameters()]
    model.after_optimizer_step(torch.tensor(False))  # a skipped step moves nothing
    assert all(torch.equal(b, t) for b, t in zip(before, latent.target.parameters()))
    model.after_optimizer_step(torch.tensor(True))
    for b, t, o in zip(before, latent.target.parameters(), latent.online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    # the target sees frame t only as a loss target: predictions do not depend on it (see the causality checks)
    plain = LatentActionModel(small_model_config(quantizer="gaussian"))
    assert plain.latent is None and "latent_loss" not in plain.metric_names


@pytest.mark.parametrize("stem", ["pair", "diff"])
def test_an_action_offset_compares_frame_t_with_frame_t_minus_k(stem):
    parts = dict(stem=stem, motion_moments="patches+pixels" if stem == "diff" else "pixels",
                 frame_correlation="phase", action_head="motion")
    torch.manual_seed(0)
    one = LatentActionModel(small_model_config(**parts)).eval()
    two = LatentActionModel(small_model_config(**parts, action_offset=2)).eval()
    two.load_state_dict(one.state_dict())
    x = torch.randn(2, 5, 4, 16, 16)
    with torch.no_grad():
        z1, z2 = one.encoder(one.in_adapter(x), x), two.encoder(two.in_adapter(x), x)
        # the first transition has no frame t-2 in the window: it is compared with frame 0, as with offset 1
        torch.testing.assert_close(z2[:, 0], z1[:, 0])
        # transition t-1 -> t of offset 2 is transition 0 -> 2 of offset 1 on the frames (t-2, t)
        for t in range(2, 5):
            pair = x[:, [t - 2, t]]
            torch.testing.assert_close(z2[:, t - 1], one.encoder(one.in_adapter(pair), pair)[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("recipe", ["spec", "demo"])
def test_a_training_forward_of_the_default_and_demo_parts_is_one_graph(recipe):
    """torch.compile (`compile: true`) gets the whole training forward without a graph break: a
    break costs a host round trip and a separately launched graph every step (the `real`
    recipe's parts: tests/test_model_gaussian.py)."""
    import torch._dynamo as dynamo
    from helpers import recipe_parts

    cfg = small_model_config(**recipe_parts(recipe))
    torch.manual_seed(0)
    explained = dynamo.explain(LatentActionModel(cfg).train())(torch.randn(2, 3, 4, 16, 16))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons][:3]
