"""A forward model in a learned latent space: predict the next frame as a slowly moving copy of an encoder sees it.

`forward_target` (`FORWARD_TARGETS` maps the config's names to parts; each name's settings are declared
in lam/config/components.py):

    pixels         the decoder predicts frame t's VVAE latents only (the spec's objective)
    pixels+latent  beside that, a predictor on the decoder's hidden tokens predicts frame t's
                   tokens as the target encoder sees them (`LatentTarget`)

Predicting latent pixels well does not require working the action out: most of a frame
is predictable from its past, and the rest is small. Predicting features of the next
frame asks the decoder, and through it the action, for what a learned encoder finds worth
representing. The pieces, BYOL/JEPA-style:

    online   a per-frame encoder (patch projection + spatial attention, no mixing over
             time) whose tokens join the decoder's input for every context frame, so the
             latent loss trains it;
    target   its exponential moving average (`latent_ema`), no gradient, which encodes
             frame t: the target moves slowly, so the online side cannot chase it into a
             trivial solution;
    predictor  an MLP from the decoder's hidden token of frame t-1's position to frame t's
             target token.

The loss is 2 - 2 cos(prediction, target) per token. Two guards against collapse: the pixel
prediction stays on as an anchor, and a variance term (VICReg's hinge) keeps every feature of
the online tokens spread over the batch (std >= 1). The target frame still reaches the
decoder only through the action: the target encoder's output is a loss target, never an input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lam.config import FORWARD_TARGET, ModelConfig, PixelsLatentSettings
from lam.model.transformer import SpaceTimeTransformer


class FrameEncoder(nn.Module):
    """Patches (B, T, N, P) -> tokens (B, T, N, E), every frame on its own."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.patch_dim, cfg.embed_dim)
        self.pos = nn.Parameter(torch.zeros(cfg.num_patches, cfg.embed_dim))
        self.transformer = SpaceTimeTransformer(cfg.embed_dim, cfg.forward_target_settings.latent_depth, cfg.num_heads, cfg.mlp_ratio)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, t, n, _ = patches.shape
        x = self.proj(patches) + self.pos  # (B, T, N, E)
        return self.transformer(x.reshape(b * t, 1, n, -1)).reshape(b, t, n, -1)  # one frame a sequence: no time mixing


class LatentTarget(nn.Module):
    """The online frame encoder, its moving-average target and the predictor; see the module docstring."""

    settings = PixelsLatentSettings

    loss_names = ("latent_loss", "latent_spread")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ema = cfg.forward_target_settings.latent_ema
        self.online = FrameEncoder(cfg)
        self.predictor = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.GELU(), nn.Linear(cfg.embed_dim, cfg.embed_dim))
        self.target = FrameEncoder(cfg).requires_grad_(False)

    @torch.no_grad()
    def reset_target(self) -> None:
        """The target starts as a copy of the online encoder (call after initialising the weights)."""
        for t, o in zip(self.target.parameters(), self.online.parameters()):
            t.copy_(o)

    def context(self, patches: torch.Tensor) -> torch.Tensor:
        """The online tokens (B, S, N, E) of context frames' patches (B, S, N, P), for the decoder's input."""
        return self.online(patches)

    def losses(self, hidden: torch.Tensor, context: torch.Tensor, target_patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """`hidden` (B, S, N, E): the decoder's tokens at the positions that predict frames 1..S;
        `context` (B, S, N, E): the online tokens the decoder got; `target_patches` (B, S, N, P):
        the patches of frames 1..S. -> {"latent_loss": 2 - 2 cos, mean over tokens; "latent_spread":
        mean over features of relu(1 - std over the batch's tokens)}."""
        with torch.no_grad():
            target = self.target(target_patches).float()
        prediction = self.predictor(hidden).float()
        latent_loss = (2 - 2 * F.cosine_similarity(prediction, target, dim=-1)).mean()
        std = context.float().flatten(0, 2).std(dim=0)  # (E,): every feature over every token of the batch
        return {"latent_loss": latent_loss, "latent_spread": F.relu(1 - std).mean()}

    @torch.no_grad()
    def update_target(self, applied: torch.Tensor | None = None) -> None:
        """target <- ema * target + (1 - ema) * online, after an optimizer step; nothing for a step
        that was skipped (`applied` false, decided on the device)."""
        for t, o in zip(self.target.parameters(), self.online.parameters()):
            moved = t.lerp(o, 1 - self.ema)
            t.copy_(moved if applied is None else torch.where(applied, moved, t))


FORWARD_TARGETS = FORWARD_TARGET.registry(LatentTarget, without_part=("pixels",))
