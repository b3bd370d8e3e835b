"""VVAELatentActionVQVAE: a VQ-VAE latent action model on VVAE latent frames.

    x (B, T, 16, 64, 64)
      -> VVAEtoLAMAdapter, per frame                     patches (B, T, N=256, P=256)
      -> encoder: motion stem + space-time transformer   z (B, T-1, K=3, D=128)
         + action token
      -> quantizer: nearest of M=12 entries per code     q (B, T-1, K, D), indices (B, T-1, K)
      -> decoder: space-time transformer over frames 0..T-2, action of t-1 -> t
         added to the tokens of frame t-1               (B, T-1, N, E)
      -> LAMtoVVAEAdapter, per frame, + frame t-1        predictions of frames 1..T-1

Encoder. Every frame gets an extra "action token" next to its N patch tokens. It
starts as a learned vector plus the motion stem's output: a per-patch MLP on the
patch at t and the same patch at t-1, mean-pooled over patches. Local motion
features look the same wherever the agent is, so their mean tells which way
things moved from the first training step; without it the token has to learn
positions through attention first (a supervised probe through the encoder stayed
at chance for 300 steps without the stem, and reached 100% on held-out files in
225 with it). Spatial attention is within a frame and temporal attention is causal,
so the action token of frame t sees exactly frames <= t; its output, projected
to K*D, is the latent action of the transition t-1 -> t (frame 0's is unused).

Options for action recovery (ModelConfig; all off by default, all on in the `lam demo` recipe):
  * diff_motion_stem: the stem sees the patch difference (t minus t-1), pooled by mean and max.
    A static background cancels; at initialisation a linear probe on the pooled features
    finds the demo's true action 81% of the time (the pair stem: 24%, chance 19%).
  * motion_to_code: the layer-normed pooled motion also goes straight to z through a linear
    map, next to the transformer's action token.
  * motion_moments: spatial moments of the patch differences join the pooled motion; they
    are linear in an object's displacement (linear probe at initialisation: 98%).
  * motion_code_only: z from that map alone (no encoder transformer).
  * standardize_z: z is whitened per code (RunningStandardize), so transitions spread over
    the codes from the first step instead of sharing one. Its penalty on the raw statistics
    (taken through the encoder's output layers only) is part of `vq_loss`.
  * fsq: finite scalar quantisation (FiniteScalarQuantizer) instead of VQ: nothing to collapse.

Decoder. Its input is frames 0..T-2 only, plus the quantized action of
t-1 -> t added to every token of frame t-1; with causal temporal attention the
output at position t-1 depends on frames < t and actions of transitions <= t,
and predicts frame t. The target frame never enters the decoder, so everything
the decoder knows about frame t beyond the past goes through the 3-code action
bottleneck. The decoder predicts the *change* from frame t-1 (its output
projection starts at zero, so an untrained model copies the previous frame):
consecutive latents are close, and the bottleneck only has to explain the change.

Rollout (optional training loss, and `rollout()` for evaluation / world-model
use): the decoder's predictions are passed back through the input adapter as
the next context frame. During training, the rollout starts from ground-truth
frames 0..t0 with t0 = T-1-h and predicts frames t0+1..T-1 using the inferred
(straight-through) actions; `rollout_loss` is its MSE. Gradients flow through
the fed-back predictions.

Latents go in and come out unnormalised (spec: "VVAE latents don't need layer
norm"); LayerNorm is used only inside the transformers, on tokens.

Cost, per sample of the default config (T=8), counted with
torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions and attention,
2 FLOPs per multiply-add; elementwise ops not counted), 27.0M parameters:
    forward            100.7 GFLOPs (encoder 54.2, decoder 46.0, adapters 0.5)
    forward + backward 301.8 GFLOPs
    use_rollout (h=2): one more decoder pass over 7 frames, 147.0 fwd / 440.8 fwd+bwd
Recount with `python -m lam.model.flops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lam.model.adapters import LAMtoVVAEAdapter, VVAEtoLAMAdapter
from lam.model.config import ModelConfig
from lam.model.quantizer import FiniteScalarQuantizer, MultiCodeQuantizer, RunningStandardize, fsq_levels_for
from lam.model.transformer import SpaceTimeTransformer


@dataclass
class LAMOutput:
    predictions: torch.Tensor  # (B, T-1, C, H, W): prediction of frame t at index t-1
    indices: torch.Tensor  # (B, T-1, K) long: codes of the transition t-1 -> t at index t-1
    loss: torch.Tensor  # scalar, with grad
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


class LatentActionEncoder(nn.Module):
    """Patches (B, T, N, P) -> pre-quantization actions (B, T-1, K, D), action t-1 -> t from frames <= t."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e = cfg.embed_dim
        self.num_codes, self.codebook_dim = cfg.num_codes, cfg.code_dim
        # Motion stem: a per-patch MLP on (patch at t, patch at t-1), mean-pooled over patches.
        self.diff_stem = cfg.diff_motion_stem
        if self.diff_stem:
            self.motion = nn.Sequential(nn.Linear(cfg.patch_dim, e), nn.GELU(), nn.Linear(e, e))
            self.motion_pool = nn.Linear(2 * e, e)  # (mean, max) over patches -> E
        else:
            self.motion = nn.Sequential(nn.Linear(2 * cfg.patch_dim, e), nn.GELU(), nn.Linear(e, e))
        self.motion_only = cfg.motion_code_only
        self.moment_proj = None
        if cfg.motion_moments:
            g = torch.linspace(-1.0, 1.0, cfg.patch_grid)
            ys, xs = torch.meshgrid(g, g, indexing="ij")
            self.register_buffer("patch_coords", torch.stack([ys.flatten(), xs.flatten()], dim=-1), persistent=False)  # (N, 2)
            self.moment_proj = nn.Linear(3 * cfg.patch_dim, e)  # (y-moment, x-moment, mean) of the change
        if not self.motion_only:
            self.proj_in = nn.Linear(cfg.patch_dim, e)
            self.pos_space = nn.Parameter(torch.zeros(cfg.num_patches, e))
            self.pos_time = nn.Parameter(torch.zeros(cfg.max_frames, e))
            self.action_token = nn.Parameter(torch.zeros(e))
            self.transformer = SpaceTimeTransformer(e, cfg.encoder_depth, cfg.num_heads, cfg.mlp_ratio)
            self.to_action = nn.Linear(e, cfg.num_codes * cfg.code_dim)
        use_m2c = cfg.motion_to_code or cfg.motion_code_only
        self.motion_to_code = nn.Linear(e, cfg.num_codes * cfg.code_dim) if use_m2c else None

    def forward(self, patches: torch.Tensor, head_view: bool = False):
        """z (B, T-1, K, D); with `head_view`, (z, z_head) where z_head is the same value computed
        from detached features, so that a loss on it trains only the output layers (see
        RunningStandardize)."""
        z, z_head = self._forward(patches, head_view)
        return (z, z_head) if head_view else z

    def _forward(self, patches: torch.Tensor, head_view: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t = patches.shape[:2]
        needs_change = self.diff_stem or self.moment_proj is not None
        change = patches[:, 1:] - patches[:, :-1] if needs_change else None  # (B, T-1, N, P)
        # The action token of frame t starts from the pooled motion between frames t-1 and t:
        # local motion features are the same wherever the object is, so their mean says what
        # moved which way from the first step of training (attention pooling alone has to
        # learn positions first, and learns actions far more slowly). Frame 0 has no motion.
        if self.diff_stem:
            local = self.motion(change)  # (B, T-1, N, E)
            motion = self.motion_pool(torch.cat([local.mean(dim=2), local.amax(dim=2)], dim=-1))  # (B, T-1, E)
        else:
            pairs = torch.cat([patches[:, 1:], patches[:, :-1]], dim=-1)  # (B, T-1, N, 2P)
            motion = self.motion(pairs).mean(dim=2)  # (B, T-1, E)
        if self.moment_proj is not None:
            # Spatial moments of the change: an object that moves by d shifts its mass by d, so
            # sum_n position_n * (patch_n at t - patch_n at t-1) is linear in d, wherever it is,
            # and a static background cancels. At initialisation a linear probe on them finds
            # the demo agent's move 98% of the time.
            moments = torch.einsum("btnp,nk->btkp", change, self.patch_coords.to(change.dtype)) / change.shape[2]
            motion = motion + self.moment_proj(torch.cat([moments.flatten(-2), change.mean(dim=2)], dim=-1))
        shape = (b, t - 1, self.num_codes, self.codebook_dim)
        if self.motion_only:
            m = F.layer_norm(motion.float(), motion.shape[-1:])
            z_head = self.motion_to_code(m.detach()).view(shape) if head_view else None
            return self.motion_to_code(m).view(shape), z_head
        x = self.proj_in(patches) + self.pos_space  # (B, T, N, E)
        motion = torch.cat([torch.zeros_like(motion[:, :1]), motion], dim=1)  # (B, T, E)
        token = (self.action_token + motion).to(x.dtype)[:, :, None]  # (B, T, 1, E)
        x = torch.cat([x, token], dim=2) + self.pos_time[:t, None]  # (B, T, N+1, E)
        x = self.transformer(x)
        token_out = x[:, 1:, -1]  # (B, T-1, E): action tokens of frames 1..T-1
        z = self.to_action(token_out)  # (B, T-1, K*D)
        z_head = self.to_action(token_out.detach()) if head_view else None
        if self.motion_to_code is not None:
            # layer norm: the pooled features are small (~0.02) next to the transformer's output
            m = F.layer_norm(motion[:, 1:].float(), motion.shape[-1:]).to(z.dtype)
            z = z + self.motion_to_code(m)
            if head_view:
                z_head = z_head + self.motion_to_code(m.detach())
        return z.view(shape), None if z_head is None else z_head.view(shape)


class LatentActionDecoder(nn.Module):
    """Context patches (B, S, N, P) of frames 0..S-1 and actions (B, S, K, D) of transitions
    0->1 .. S-1->S  ->  (B, S, N, P) patch-space outputs, position s predicting frame s+1."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e = cfg.embed_dim
        self.proj_in = nn.Linear(cfg.patch_dim, e)
        self.pos_space = nn.Parameter(torch.zeros(cfg.num_patches, e))
        self.pos_time = nn.Parameter(torch.zeros(cfg.max_frames, e))
        self.action_proj = nn.Linear(cfg.num_codes * cfg.code_dim, e)
        self.transformer = SpaceTimeTransformer(e, cfg.decoder_depth, cfg.num_heads, cfg.mlp_ratio)
        self.proj_out = nn.Linear(e, cfg.patch_dim)

    def forward(self, patches: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        s = patches.shape[1]
        a = self.action_proj(actions.flatten(2).to(self.action_proj.weight.dtype))  # (B, S, E)
        x = self.proj_in(patches) + self.pos_space + self.pos_time[:s, None] + a[:, :, None]  # (B, S, N, E)
        return self.proj_out(self.transformer(x))  # (B, S, N, P)


class VVAELatentActionVQVAE(nn.Module):
    """Adapter -> encoder -> quantizer -> decoder -> adapter; see the module docstring.

    One input adapter serves encoder and decoder (patches are computed once per window).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config.validate()
        adapter_kw = dict(patch_dim=cfg.patch_dim, latent_size=cfg.latent_size, patch_grid=cfg.patch_grid)
        self.in_adapter = VVAEtoLAMAdapter(cfg.in_channels, **adapter_kw)
        self.encoder = LatentActionEncoder(cfg)
        if cfg.fsq:
            self.quantizer = FiniteScalarQuantizer(cfg.num_codes, fsq_levels_for(cfg.num_embeddings))
        else:
            self.quantizer = MultiCodeQuantizer(
                num_codes=cfg.num_codes,
                num_embeddings=cfg.num_embeddings,
                codebook_dim=cfg.codebook_dim,
                commitment_weight=cfg.commitment_weight,
                dead_code_steps=cfg.dead_code_steps,
            )
        self.z_norm = RunningStandardize(cfg.num_codes, cfg.code_dim) if cfg.standardize_z else nn.Identity()
        self.decoder = LatentActionDecoder(cfg)
        self.out_adapter = LAMtoVVAEAdapter(cfg.in_channels, **adapter_kw)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for coder in (self.encoder, self.decoder):
            if hasattr(coder, "pos_space"):
                nn.init.normal_(coder.pos_space, std=0.02)
                nn.init.normal_(coder.pos_time, std=0.02)
        if not self.encoder.motion_only:
            nn.init.normal_(self.encoder.action_token, std=0.02)
            # After the final LayerNorm tokens have unit variance; std E^-1/2 makes z ~ N(0, 1)
            # per dim, the same scale as the codebook's initial entries.
            nn.init.normal_(self.encoder.to_action.weight, std=self.config.embed_dim**-0.5)
        if self.encoder.motion_to_code is not None:
            nn.init.normal_(self.encoder.motion_to_code.weight, std=self.config.embed_dim**-0.5)
        # Zero output projection: the untrained decoder predicts "no change from frame t-1".
        nn.init.zeros_(self.decoder.proj_out.weight)

    # ------------------------------------------------------------- internals
    def _check_frames(self, x: torch.Tensor, min_frames: int = 2) -> None:
        c = self.config
        want = (c.in_channels, c.latent_size, c.latent_size)
        if x.ndim != 5 or tuple(x.shape[2:]) != want:
            raise ValueError(f"expected latents of shape [B, T, {want[0]}, {want[1]}, {want[2]}], got {list(x.shape)}")
        if not min_frames <= x.shape[1] <= c.max_frames:
            raise ValueError(f"window has {x.shape[1]} frames; need {min_frames}..{c.max_frames} (model.max_frames)")

    def _predict(self, frames: torch.Tensor, patches: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Next frames (B, S, C, H, W) from context frames 0..S-1 (B, S, C, H, W), their patches
        (B, S, N, P) and actions (B, S, K, D) of transitions 0->1 .. S-1->S."""
        delta = self.out_adapter(self.decoder(patches, actions))  # (B, S, C, H, W)
        return frames + delta  # the decoder predicts the change from the previous frame

    def _rollout(self, frames, patches, actions, horizon: int, first: torch.Tensor | None = None) -> torch.Tensor:
        """Autoregressive: ground-truth frames 0..S-1 (and their patches), actions (B, >= S-1+horizon, K, D)
        -> predicted frames S..S+horizon-1 (B, horizon, C, H, W). `first`, if given, is the already
        computed prediction of frame S (identical by causality), saving one decoder pass."""
        preds = []
        for i in range(horizon):
            s = frames.shape[1]
            if i == 0 and first is not None:
                nxt = first
            else:
                nxt = self._predict(frames, patches, actions[:, :s])[:, -1]  # (B, C, H, W), frame s
            preds.append(nxt)
            if i + 1 < horizon:  # feed the prediction back as the newest context frame
                frames = torch.cat([frames, nxt[:, None]], dim=1)
                patches = torch.cat([patches, self.in_adapter(nxt)[:, None]], dim=1)
        return torch.stack(preds, dim=1)

    # ------------------------------------------------------------- training
    def forward(self, x: torch.Tensor) -> LAMOutput:
        """x: (B, T, C, H, W) window of latent frames."""
        self._check_frames(x)
        cfg = self.config
        t = x.shape[1]
        patches = self.in_adapter(x)  # (B, T, N, P)
        whitening_penalty = None
        if cfg.standardize_z:  # the whitening's penalty needs the output-layer-only view of z
            z, z_head = self.encoder(patches, head_view=True)  # (B, T-1, K, D) twice
            z, whitening_penalty = self.z_norm(z, z_head)  # penalty None in evaluation
        else:
            z = self.encoder(patches)  # (B, T-1, K, D)
        vq = self.quantizer(z)
        pred = self._predict(x[:, :-1], patches[:, :-1], vq.quantized)  # (B, T-1, C, H, W), frames 1..T-1

        target = x[:, 1:].float()
        err = pred.float() - target
        mse_loss = err.pow(2).mean()
        vq_loss = vq.loss
        if whitening_penalty is not None:  # keeps the raw statistics still (see RunningStandardize)
            vq_loss = vq_loss + whitening_penalty
        # FSQ alone has no auxiliary loss. Adding its constant zero anyway is harmless in eager
        # mode, but torch.compile (inductor, torch 2.13) then returned the loss without a graph
        # (`y + y.new_zeros(())` returned next to `y.detach()`; tests/test_model_fsq.py).
        loss = mse_loss + vq_loss if self.quantizer.has_loss or whitening_penalty is not None else mse_loss
        metrics = {
            "mse_loss": mse_loss,
            "mae_loss": err.abs().mean(),
            "vq_loss": vq_loss,
            "codebook_loss": vq.codebook_loss,
            "commitment_loss": vq.commitment_loss,
            "codebook_usage": vq.usage,
            "perplexity": vq.perplexity,
        }
        if cfg.use_rollout:
            h = cfg.rollout_horizon
            t0 = t - 1 - h  # last ground-truth frame of the rollout's context
            if t0 < 0:
                raise ValueError(f"rollout_horizon {h} needs windows of at least {h + 1} frames, got {t}")
            rolled = self._rollout(x[:, : t0 + 1], patches[:, : t0 + 1], vq.quantized, h, first=pred[:, t0])
            rollout_loss = F.mse_loss(rolled.float(), target[:, t0:])  # frames t0+1..T-1
            loss = loss + cfg.rollout_weight * rollout_loss
            metrics["rollout_loss"] = rollout_loss
        metrics["loss"] = loss
        return LAMOutput(
            predictions=pred,
            indices=vq.indices,
            loss=loss,
            metrics={k: v.detach().float() for k, v in metrics.items()},
        )

    # ------------------------------------------------------------- inference
    def encode_actions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C, H, W) -> (indices (B, T-1, K) long, z_pre (B, T-1, K, D) float32).
        Index t-1 is the transition t-1 -> t, computed from frames <= t. Changes no state, in
        either mode: whitening (`standardize_z`) uses its running statistics, as in evaluation."""
        self._check_frames(x)
        z = self.encoder(self.in_adapter(x)).float()
        if self.config.standardize_z:
            z = self.z_norm.standardize(z)
        return self.quantizer.nearest(z), z

    def decode_with_actions(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-frame prediction with given actions.

        x (B, T, C, H, W) supplies context frames 0..T-2 (frame T-1 is never read), indices
        (B, T-1, K) the actions of transitions 0->1 .. T-2->T-1. Returns (B, T-1, C, H, W):
        index t-1 is the prediction of frame t from frames < t and actions of transitions <= t.
        """
        self._check_frames(x)
        self._check_indices(indices, x.shape[0], x.shape[1] - 1)
        frames = x[:, :-1]
        return self._predict(frames, self.in_adapter(frames), self.quantizer.lookup(indices))

    def rollout(
        self,
        x: torch.Tensor,
        indices: torch.Tensor,
        horizon: int,
        context_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Autoregressive prediction that feeds its own predictions back.

        x (B, S, C, H, W): ground-truth context frames 0..S-1. indices (B, horizon, K): actions of
        transitions S-1->S, ..., S+horizon-2->S+horizon-1. Returns predicted frames S..S+horizon-1,
        (B, horizon, C, H, W). The decoder also wants the actions between the context frames
        (S-1 of them); pass them as `context_indices` (B, S-1, K) or leave None to infer them from x
        with the encoder. With `indices` as returned by forward/encode_actions on a full window:
            rollout(x[:, :t0+1], indices[:, t0:t0+h], h)   # predicts frames t0+1..t0+h
        from ground-truth frames <= t0 only.
        """
        self._check_frames(x, min_frames=1)
        b, s = x.shape[:2]
        if horizon < 1 or s - 1 + horizon > self.config.max_frames:
            raise ValueError(f"horizon must be in 1..{self.config.max_frames - s + 1} for {s} context frames, got {horizon}")
        self._check_indices(indices, b, horizon)
        if context_indices is None:
            context_indices = self.encode_actions(x)[0] if s > 1 else indices[:, :0]
        self._check_indices(context_indices, b, s - 1)
        actions = self.quantizer.lookup(torch.cat([context_indices, indices], dim=1))  # (B, S-1+h, K, D)
        return self._rollout(x, self.in_adapter(x), actions, horizon)

    def action_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., K) codes -> (...) long action ids, mixed radix: sum_k code_k * M**(K-1-k)."""
        m, k = self.config.num_embeddings, self.config.num_codes
        radix = m ** torch.arange(k - 1, -1, -1, device=indices.device, dtype=torch.long)  # (K,)
        return (indices.long() * radix).sum(-1)

    def action_ids_to_indices(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of `action_ids`: (...) long -> (..., K) codes."""
        m, k = self.config.num_embeddings, self.config.num_codes
        radix = m ** torch.arange(k - 1, -1, -1, device=ids.device, dtype=torch.long)  # (K,)
        return (ids.long()[..., None] // radix) % m

    def _check_indices(self, indices: torch.Tensor, batch: int, steps: int) -> None:
        want = (batch, steps, self.config.num_codes)
        if tuple(indices.shape) != want:
            raise ValueError(f"expected action indices of shape {list(want)}, got {list(indices.shape)}")
        if indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"action indices must be integers, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.config.num_embeddings):
            raise ValueError(f"action indices must be in 0..{self.config.num_embeddings - 1}")
