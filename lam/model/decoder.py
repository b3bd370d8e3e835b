"""The latent action decoder: past frames plus actions -> the next frames.

Its input is frames 0..S-1 only, plus the quantized action of s -> s+1 added to
every token of frame s; with causal temporal attention the output at position s
depends on frames <= s and actions of transitions <= s -> s+1, and predicts frame
s+1. The target frame never enters the decoder, so everything it knows about frame
t beyond the past goes through the action bottleneck.

What the model predicts from the decoder's output (`prediction`, `PREDICTIONS`):

    residual  frame t-1 plus the decoder's change (the spec's model)
    shifted   frame t-1 moved by a mixture of shifts that a linear map of the action alone
              picks (`ActionShift`: a vertical and a horizontal shift), plus the decoder's
              change: camera motion and scrolling become a cheap, direct use of the action, so
              the encoder is rewarded for saying which way the picture moved from the first
              steps of training
    shifted-local  the same, with the moved frame used only where a per-pixel mask read off
              the decoder's output says: an object that the action moves (a pointer, an
              agent) on a background that stays
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from lam.config import PREDICTION, ModelConfig
from lam.model.adapters import LAMtoVVAEAdapter
from lam.model.transformer import SpaceTimeTransformer


class LatentActionDecoder(nn.Module):
    """Context patches (B, S, N, P) of frames 0..S-1 and actions (B, S, K, D) of transitions
    0->1 .. S-1->S  ->  (B, S, N, P) patch-space outputs, position s predicting frame s+1."""

    def __init__(self, cfg: ModelConfig, code_dim: int):
        super().__init__()
        e = cfg.embed_dim
        self.proj_in = nn.Linear(cfg.patch_dim, e)
        self.pos_space = nn.Parameter(torch.zeros(cfg.num_patches, e))
        self.pos_time = nn.Parameter(torch.zeros(cfg.max_frames, e))
        self.action_proj = nn.Linear(cfg.num_codes * code_dim, e)
        self.transformer = SpaceTimeTransformer(e, cfg.decoder_depth, cfg.num_heads, cfg.mlp_ratio)
        self.proj_out = nn.Linear(e, cfg.patch_dim)

    def init_weights(self) -> None:
        nn.init.normal_(self.pos_space, std=0.02)
        nn.init.normal_(self.pos_time, std=0.02)
        # Zero output projection: the untrained decoder predicts "no change from frame t-1".
        nn.init.zeros_(self.proj_out.weight)

    def forward(self, patches: torch.Tensor, actions: torch.Tensor, context: torch.Tensor | None = None,
                hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`context` (B, S, N, E), if given, is added to the frames' tokens (a learned frame
        encoder's view of the same frames). With `hidden`, also the transformer's output tokens."""
        s = patches.shape[1]
        a = self.action_proj(actions.flatten(2).to(self.action_proj.weight.dtype))  # (B, S, E)
        x = self.proj_in(patches) + self.pos_space + self.pos_time[:s, None] + a[:, :, None]  # (B, S, N, E)
        if context is not None:
            x = x + context
        tokens = self.transformer(x)
        out = self.proj_out(tokens)  # (B, S, N, P)
        return (out, tokens) if hidden else out


class ActionShift(nn.Module):
    """Frames (B, S, C, H, W) and actions (B, S, K, D) -> the frames moved by the actions' shifts.

    A linear map of each action gives logits over the vertical shifts dy and, separately, the
    horizontal shifts dx of a frame (circular); the product of their softmaxes is a kernel that
    moves frame s by that mixture of shifts (an FFT convolution, in float32). The result is
    blended in by a learned gate that starts at 0, so the untrained model still copies the
    previous frame, and the kernel starts uniform, so no shift is preferred before the actions
    say one. With `local`, the blend is also weighted per latent pixel by a sigmoid mask that a
    transposed convolution reads off the decoder's patch outputs (where the moved frame is right)."""

    # Logits and gate are RATE times their parameters: Adam moves a parameter by about the
    # learning rate a step whatever its gradient, and a kernel has to go from uniform to one
    # peak (logits apart by ~log(H*W)) and the gate from 0 to ~1 within the first epochs.
    RATE = 16.0

    def __init__(self, cfg: ModelConfig, code_dim: int, local: bool = False):
        super().__init__()
        self.size = cfg.latent_size
        self.to_shift = nn.Linear(cfg.num_codes * code_dim, 2 * self.size)  # logits over dy, then dx; centred
        self.gate = nn.Parameter(torch.zeros(()))
        self.where = LAMtoVVAEAdapter(1, cfg.patch_dim, cfg.latent_size, cfg.patch_grid) if local else None

    def init_weights(self) -> None:
        nn.init.zeros_(self.to_shift.weight)
        nn.init.zeros_(self.to_shift.bias)
        if self.where is not None:
            nn.init.zeros_(self.where.deconv.bias)  # a mask of 0.5 everywhere until the decoder learns where

    def shift_weights(self, flat_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., K * D) -> the weights of the vertical shifts (..., H) and of the horizontal ones (..., W), centred."""
        logits = self.RATE * self.to_shift(flat_actions.float())  # (..., 2H)
        dy, dx = F.softmax(logits.unflatten(-1, (2, self.size)), dim=-1).unbind(dim=-2)
        return dy, dx

    def kernel(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, S, K, D) -> (B, S, H, W): the weight of each shift, centred (index [H//2 + dy, W//2 + dx]); sums to 1."""
        dy, dx = self.shift_weights(actions.flatten(2))  # (B, S, H), (B, S, W)
        return dy[..., :, None] * dx[..., None, :]

    def forward(self, frames: torch.Tensor, actions: torch.Tensor, decoded: torch.Tensor | None = None) -> torch.Tensor:
        """`decoded`: the decoder's patch outputs (B, S, N, P), needed with `local`."""
        blend = self.RATE * self.gate
        if self.where is not None:
            if decoded is None:
                raise ValueError("a local shift needs the decoder's outputs (decoded=)")
            blend = blend * torch.sigmoid(self.where(decoded).float())  # (B, S, 1, H, W)
        with torch.autocast(frames.device.type, enabled=False):
            x = frames.float()
            kernel = torch.fft.ifftshift(self.kernel(actions), dim=(-2, -1))  # index [dy mod H, dx mod W]
            moved = torch.fft.irfft2(torch.fft.rfft2(x) * torch.fft.rfft2(kernel)[:, :, None], s=x.shape[-2:])
            return (x + blend * (moved - x)).to(frames.dtype)


PREDICTIONS = PREDICTION.registry({"residual": None, "shifted": ActionShift, "shifted-local": partial(ActionShift, local=True)})
