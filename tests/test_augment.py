"""Training-time augmentation: every frame of a window moves by the same offset."""

import torch

from lam.train.augment import shift_windows


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
