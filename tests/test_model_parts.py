"""The encoder's parts: what each stem sees, the head's output-layer view, the motion moments, the frame correlation."""

from __future__ import annotations

import pytest
import torch
from helpers import small_model_config

from lam.model import LatentActionModel
from lam.model.terms import ForwardPass


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_codes_from_differences_alone_are_blind_to_a_static_background(quantizer):
    cfg = small_model_config(stem="diff", action_head="motion", quantizer=quantizer, whiten=True)
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()
    x = torch.randn(4, 4, 4, 16, 16)
    _, z = model.encode_actions(x)
    background = torch.randn(1, 1, 4, 16, 16)  # the same in every frame
    torch.testing.assert_close(model.encode_actions(x + background)[1], z, atol=1e-4, rtol=1e-4)
    # ...and the pair stem, which sees the frames themselves, is not
    pair = LatentActionModel(small_model_config(stem="pair", action_head="motion", quantizer=quantizer)).eval()
    assert (pair.encode_actions(x + background)[1] - pair.encode_actions(x)[1]).abs().max() > 1e-3


@pytest.mark.parametrize("head", ["token", "token+motion", "motion"])
def test_head_view_has_the_same_value_and_no_gradient_into_the_body(head):
    cfg = small_model_config(stem="diff", action_head=head, quantizer="fsq", whiten=True)
    torch.manual_seed(0)
    model = LatentActionModel(cfg).train()
    patches = model.in_adapter(torch.randn(2, 3, 4, 16, 16))
    z, z_head = model.encoder(patches, head_view=True)
    torch.testing.assert_close(z, z_head)
    torch.testing.assert_close(model.encoder(patches), z)
    z_head.sum().backward()
    output_layers = {name for name, _ in model.encoder.head.named_parameters() if name.split(".")[0] in ("to_action", "motion_to_code")}
    with_grad = {name for name, p in model.encoder.head.named_parameters() if p.grad is not None}
    assert with_grad == output_layers and output_layers
    assert all(p.grad is None for p in model.encoder.stem.parameters())


def test_motion_moments_are_linear_in_displacement_and_blind_to_background():
    cfg = small_model_config(stem="diff", motion_moments="patches", action_head="token+motion", patch_dim=8)
    torch.manual_seed(0)
    encoder = LatentActionModel(cfg).encoder.eval()
    coords = encoder.moments.patch_coords  # (N, 2), patch grid 4x4 in [-1, 1]
    assert coords.shape == (16, 2) and float(coords.min()) == -1.0 and float(coords.max()) == 1.0
    seen = []
    encoder.moments.proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))

    blob = torch.zeros(16, 8)
    blob[5, 0] = 1.0  # one object (channel 0) in patch (row 1, col 1)
    moved_right, moved_down = torch.zeros(16, 8), torch.zeros(16, 8)
    moved_right[6, 0] = 1.0  # one patch to the right
    moved_down[9, 0] = 1.0  # one patch down
    background = torch.randn(16, 8)
    step = 2.0 / 3  # grid spacing in [-1, 1] for 4 patches
    for after, axis in ((moved_right, 1), (moved_down, 0)):
        seen.clear()
        encoder(torch.stack([blob + background, after + background])[None])
        feats = seen[0][0, 0]  # (3P,): y-moments (P), x-moments (P), mean change (P)
        moments = feats[: 2 * 8].view(2, 8)
        torch.testing.assert_close(moments[axis, 0], torch.tensor(step / 16))  # the object's shift / N
        torch.testing.assert_close(moments[1 - axis, 0], torch.tensor(0.0))
        torch.testing.assert_close(moments[:, 1:], torch.zeros(2, 7))  # other channels: the background cancels
        torch.testing.assert_close(feats[2 * 8 :], torch.zeros(8))  # total mass unchanged


def test_pixel_moments_give_a_small_objects_move_anywhere_and_are_blind_to_background():
    cfg = small_model_config(stem="diff", motion_moments="pixels", latent_size=32, patch_grid=4)
    moments = LatentActionModel(cfg).encoder.pixel_moments
    background = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(0))  # the same in every frame
    spacing = 2.0 / 31  # between latent pixels, coordinates in [-1, 1]
    for (y, x), (dy, dx) in (((3, 4), (0, 3)), ((20, 25), (-2, 0)), ((10, 6), (5, -4))):  # anywhere, any move
        before, after = background.clone(), background.clone()
        before[1:3, y:y + 2, x:x + 2] += 4.0  # a 2x2 object in channels 1 and 2, of the same contrast everywhere
        after[1:3, y + dy:y + dy + 2, x + dx:x + dx + 2] += 4.0
        features = moments.features(torch.stack([before, after])[None])[0, 0]  # (3C + 4,)
        c = 4
        y_moments, x_moments, totals = features[:c], features[c:2 * c], features[2 * c:3 * c]
        appeared, went = features[3 * c:3 * c + 2], features[3 * c + 2:]
        for channel in (1, 2):  # the object's channels: half its move, wherever it is
            torch.testing.assert_close(y_moments[channel], torch.tensor(dy * spacing / 2), atol=1e-4, rtol=0)
            torch.testing.assert_close(x_moments[channel], torch.tensor(dx * spacing / 2), atol=1e-4, rtol=0)
        torch.testing.assert_close(features[[0, 3, 4, 7, 8, 11]], torch.zeros(6))  # channels without it: no change at all
        torch.testing.assert_close(totals[1:3], torch.zeros(2), atol=1e-5, rtol=0)  # it appeared as much as it went
        torch.testing.assert_close(appeared - went, torch.tensor([dy, dx]) * spacing, atol=0.5 * spacing, rtol=0)
    assert moments.features(torch.stack([background, background])[None]).abs().max() == 0  # no change: zeros, not NaN


@pytest.mark.parametrize("quantizer", ["gaussian", "vq", "fsq"])
def test_the_moments_loss_trains_the_encoder_through_the_action_alone(quantizer):
    plain = LatentActionModel(small_model_config(quantizer=quantizer))
    assert "moments" not in plain.optional_terms and "moments_loss" not in plain.metric_names  # off by default
    cfg = small_model_config(quantizer=quantizer, whiten=True, moments_weight=1.0)
    torch.manual_seed(0)
    model = LatentActionModel(cfg).train()
    x = torch.randn(3, 4, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert "moments_loss" in model.metric_names and float(out.metrics["moments_loss"]) > 0
    model.zero_grad()
    term = model.optional_terms["moments"]
    actions = model.quantizer(model._encode(x, model.in_adapter(x))[0]).quantized
    term(ForwardPass(model, x, None, actions, None, None, {}, None, None))[0].backward()
    encoder_grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert encoder_grads and any(float(g.abs().max()) > 0 for g in encoder_grads)  # the action has to carry the moments
    assert all(p.grad is None for p in model.decoder.parameters())  # the decoder has no part in it
    assert term.change_moments.features(x).shape == (3, 3, 3 * 4 + 4)  # the target: per transition, 3C + 4 moments
    assert not list(term.change_moments.parameters())  # ...which have no weights to learn


@pytest.mark.parametrize("correlation", ["phase", "cross"])
def test_frame_correlation_peaks_at_the_shift_of_the_whole_picture(correlation):
    cfg = small_model_config(stem="diff", frame_correlation=correlation, latent_size=32, patch_grid=4)
    encoder = LatentActionModel(cfg).encoder
    g = torch.Generator().manual_seed(0)
    picture = torch.nn.functional.avg_pool2d(torch.randn(4, 36, 36, generator=g)[None], 5, stride=1)[0]  # smooth, like a scene
    window = torch.stack([picture + 3.0,  # a brightness change is not motion
                          torch.roll(picture, (2, -5), dims=(-2, -1)), torch.roll(picture, (-6, 1), dims=(-2, -1))])[None]
    surface = encoder.correlation.surface(window)[0]  # (2, 32, 32)
    assert surface.shape == (2, 32, 32) and torch.allclose(surface.abs().amax(dim=(-2, -1)), torch.ones(2))
    peaks = [divmod(int(s.argmax()), 32) for s in surface]
    assert peaks == [(16 + 2, 16 - 5), (16 - 8, 16 + 6)]  # frame 1 = frame 0 moved (2, -5); frame 2 = frame 1 moved (-8, 6)
    flat = encoder.correlation.surface(torch.ones(1, 2, 4, 32, 32))
    assert torch.equal(flat, torch.zeros_like(flat))  # nothing to correlate: zeros, not NaN


def test_the_change_correlation_peaks_where_a_small_object_moved_on_a_static_picture():
    g = torch.Generator().manual_seed(0)
    page = torch.zeros(4, 32, 32)
    page[:, 16:, :] = torch.randn(4, 16, 32, generator=g)  # a static page: text below, a plain area above
    pointer = torch.zeros(4, 32, 32)
    pointer[:, 4:8, 5:8] = 2.0 * torch.randn(4, 4, 3, generator=g)  # a small arrow, over the plain area
    window = torch.stack([page + pointer, page + torch.roll(pointer, (3, 4), dims=(-2, -1)),
                          page + torch.roll(pointer, (3, 1), dims=(-2, -1))])[None]  # moved (3, 4), then (0, -3)
    surface = {}
    for correlation in ("phase", "change"):
        encoder = LatentActionModel(small_model_config(stem="diff", frame_correlation=correlation, latent_size=32, patch_grid=4)).encoder
        surface[correlation] = encoder.correlation.surface(window)[0]  # (2, 32, 32)
    peaks = {name: [divmod(int(s.argmax()), 32) for s in surfaces] for name, surfaces in surface.items()}
    assert peaks["phase"] == [(16, 16), (16, 16)]  # the whole picture: the page did not move
    assert peaks["change"] == [(16 + 3, 16 + 4), (16, 16 - 3)]  # what appeared is what went, moved
    still = LatentActionModel(small_model_config(stem="diff", frame_correlation="change", latent_size=32, patch_grid=4))
    flat = still.encoder.correlation.surface(torch.stack([page, page])[None])
    assert torch.equal(flat, torch.zeros_like(flat))  # nothing changed: zeros, not NaN


def test_phase_and_change_correlations_each_get_their_own_projection():
    cfg = small_model_config(stem="diff", frame_correlation="phase+change", action_head="motion")
    torch.manual_seed(0)
    model = LatentActionModel(cfg).train()
    x = torch.randn(2, 3, 4, 16, 16)
    model.encoder(model.in_adapter(x), x).sum().backward()
    whole, change = model.encoder.correlation.parts
    assert (whole.of_change, change.of_change) == (False, True)
    assert whole.proj.weight.grad.abs().sum() > 0 and change.proj.weight.grad.abs().sum() > 0


def test_frame_correlation_reaches_the_codes_and_needs_the_frames():
    cfg = small_model_config(stem="diff", frame_correlation="phase", action_head="motion")
    torch.manual_seed(0)
    model = LatentActionModel(cfg).train()
    x = torch.randn(2, 3, 4, 16, 16)
    model.encoder(model.in_adapter(x), x).sum().backward()
    assert model.encoder.correlation.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="frame_correlation needs the latent frames"):
        model.encoder(model.in_adapter(x))


def shift_picked_by_the_action(prediction: str, dy: int, dx: int):
    """A model (16x16 latents) whose shift is fully blended in and whose actions with first dim 1
    (the returned `picks`, 2 windows of 2 transitions) move a frame by (dy, dx): logits 8 + dy and 16 + 8 + dx."""
    cfg = small_model_config(quantizer="gaussian", prediction=prediction)
    torch.manual_seed(0)
    model = LatentActionModel(cfg)
    with torch.no_grad():
        model.shift.gate.fill_(1.0 / model.shift.RATE)
        model.shift.to_shift.weight.zero_()
        model.shift.to_shift.weight[[8 + dy, 16 + 8 + dx], 0] = 50.0
    picks = torch.zeros(2, 2, cfg.num_codes, cfg.quantizer_settings.codebook_dim)
    picks[..., 0, 0] = 1.0
    return model, picks


def test_shifted_prediction_starts_as_a_copy_and_moves_the_frame_where_the_action_says():
    cfg = small_model_config(quantizer="gaussian", prediction="shifted")
    torch.manual_seed(0)
    model = LatentActionModel(cfg)
    x = torch.randn(2, 2, 4, 16, 16)
    actions = torch.randn(2, 2, cfg.num_codes, cfg.quantizer_settings.codebook_dim)
    torch.testing.assert_close(model.shift(x, actions), x)  # untrained: the previous frame
    torch.testing.assert_close(model.shift.kernel(actions).sum(dim=(-2, -1)), torch.ones(2, 2))
    model, picks = shift_picked_by_the_action("shifted", 3, -2)
    torch.testing.assert_close(model.shift(x, picks), torch.roll(x, (3, -2), dims=(-2, -1)), atol=1e-4, rtol=1e-4)


def test_local_shift_moves_only_where_its_mask_says():
    model, picks = shift_picked_by_the_action("shifted-local", 1, 1)
    x = torch.randn(2, 2, 4, 16, 16)
    decoded = torch.randn(2, 2, model.config.num_patches, model.config.patch_dim)
    with torch.no_grad():
        model.shift.where.deconv.weight.zero_()
        model.shift.where.deconv.bias.fill_(30.0)  # the mask says: everywhere
    torch.testing.assert_close(model.shift(x, picks, decoded), torch.roll(x, (1, 1), dims=(-2, -1)), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        model.shift.where.deconv.bias.fill_(-30.0)  # the mask says: nowhere
    torch.testing.assert_close(model.shift(x, picks, decoded), x, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="needs the decoder's outputs"):
        model.shift(x, picks)


def test_shifted_prediction_trains_the_encoder_through_the_shift():
    cfg = small_model_config(quantizer="gaussian", prediction="shifted", stem="diff", frame_correlation="phase")
    torch.manual_seed(0)
    model = LatentActionModel(cfg).train()
    model.decoder.proj_out.requires_grad_(False)  # the decoder's output stays zero: the shift is the only path
    picture = torch.randn(2, 1, 4, 16, 16)
    x = torch.cat([picture, torch.roll(picture, 2, dims=-1), torch.roll(picture, 4, dims=-1)], dim=1)  # a scrolling view
    before = model.encoder.correlation.proj.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):  # gate and shift map start at zero: the encoder's gradient arrives from the third step
        optimizer.zero_grad()
        out = model(x)
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.metrics["mse_loss"]))
    assert not torch.equal(model.encoder.correlation.proj.weight, before)
    assert losses[-1] < losses[0]


def test_change_weight_puts_the_loss_where_frames_changed():
    x = torch.zeros(2, 3, 4, 16, 16)
    x[:, 1:, :, :4, :4] = 1.0  # only the top-left corner changes, between frames 0 and 1
    plain = LatentActionModel(small_model_config(quantizer="fsq")).eval()
    weighted = LatentActionModel(small_model_config(quantizer="fsq", change_weight=4.0)).eval()
    weighted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        out_plain, out_weighted = plain(x), weighted(x)
    assert torch.equal(out_plain.metrics["mse_loss"], out_weighted.metrics["mse_loss"])  # the metric stays plain MSE
    torch.testing.assert_close(out_plain.loss, out_plain.metrics["mse_loss"])
    # An untrained model copies the last frame, so its error is exactly the change: the weighted
    # loss counts the changed pixels 1 + 4 / mean(change) times as much as the others.
    err = (out_weighted.predictions - x[:, 1:]).pow(2)
    change = (x[:, 1:] - x[:, :-1]).abs()
    w = 1 + 4.0 * change / change.mean()
    torch.testing.assert_close(out_weighted.loss, (w * err).mean() / w.mean())
    assert out_weighted.loss > 2 * out_plain.loss
