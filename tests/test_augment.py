"""Training-time augmentation: every frame of a window is shifted, cropped and recoloured alike."""

import pytest
import torch
from torch.nn import functional as F

from lam.train.augment import augment_windows, crop_windows, gain_windows, shift_windows


def test_shift_moves_every_frame_of_a_window_alike_and_keeps_the_change():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 2, 8, 8)
    y = shift_windows(x, max_shift=2)
    for w in range(6):
        # one offset per window: the offset that maps frame 0 maps every frame
        offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(torch.roll(x[w, 0], (dy, dx), dims=(-2, -1)), y[w, 0])]
        assert len(offsets) == 1
        rolled = torch.roll(x[w], offsets[0], dims=(-2, -1))
        assert torch.equal(rolled, y[w])
        assert torch.equal(y[w, 1:] - y[w, :-1], torch.roll(x[w, 1:] - x[w, :-1], offsets[0], dims=(-2, -1)))
    assert not torch.equal(y, x)  # some window moved
    assert shift_windows(x, 0) is x  # 0: no augmentation


def test_shift_is_seeded_by_torch():
    x = torch.randn(4, 2, 1, 8, 8)
    torch.manual_seed(3)
    a = shift_windows(x, 3)
    torch.manual_seed(3)
    assert torch.equal(shift_windows(x, 3), a)


def test_crop_cuts_every_frame_of_a_window_to_the_same_box():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 2, 16, 16)
    y = crop_windows(x, max_crop=0.25)
    assert y.shape == x.shape and not torch.equal(y, x)
    for w in range(5):
        # the box that gives frame 0 gives every frame: find it by search over boxes
        boxes = [(top, left, bh, bw) for bh in range(12, 17) for bw in range(12, 17)
                 for top in range(0, 17 - bh) for left in range(0, 17 - bw)
                 if torch.allclose(F.interpolate(x[w, :1, :, top : top + bh, left : left + bw], size=(16, 16),
                                                 mode="bilinear", align_corners=False), y[w, :1], atol=1e-6)]
        assert len(boxes) >= 1
        top, left, bh, bw = boxes[0]
        assert bh >= 12 and bw >= 12  # at least 1 - 0.25 of each side kept
        again = F.interpolate(x[w, :, :, top : top + bh, left : left + bw], size=(16, 16), mode="bilinear", align_corners=False)
        assert torch.allclose(again, y[w], atol=1e-6)
    assert crop_windows(x, 0.0) is x


def test_gain_changes_each_channel_of_a_window_alike():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 8, 8)
    y = gain_windows(x, max_gain=0.2)
    for w in range(4):
        for c in range(2):
            # one affine map per window and channel: fitted on frame 0, it gives every frame
            a = x[w, :, c].reshape(-1)
            b = y[w, :, c].reshape(-1)
            scale = torch.cov(torch.stack([a, b]))[0, 1] / a.var()
            offset = b.mean() - scale * a.mean()
            assert torch.allclose(scale * a + offset, b, atol=1e-5)
            assert 0.8 - 1e-6 <= float(scale) <= 1.2 + 1e-6
            assert abs(float(offset)) <= 0.2 * float(x[w, :, c].std()) + 1e-5
    # the change between frames keeps its pattern (scaled, never moved)
    d_x, d_y = x[:, 1:] - x[:, :-1], y[:, 1:] - y[:, :-1]
    assert torch.allclose((d_y / d_x)[0, :, 0], (d_y / d_x)[0, 0, 0, 0, 0].expand_as(d_x[0, :, 0]), atol=1e-4)
    assert gain_windows(x, 0.0) is x


def test_augmentations_compose_and_are_off_by_default():
    x = torch.randn(2, 3, 2, 8, 8)
    assert augment_windows(x) is x
    torch.manual_seed(1)
    a = augment_windows(x, shift=2, crop=0.2, gain=0.1)
    torch.manual_seed(1)
    assert torch.equal(augment_windows(x, shift=2, crop=0.2, gain=0.1), a) and a.shape == x.shape


@pytest.mark.parametrize("key,value", [("augment_crop", 1.0), ("augment_gain", -0.1)])
def test_bad_augmentation_settings_are_user_errors(key, value):
    from lam.config import RunConfig
    from lam.errors import UserError

    with pytest.raises(UserError, match=key):
        RunConfig.from_dict({"data_dir": "d", key: value}).validate()
