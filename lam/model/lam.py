"""LatentActionModel (the spec's VVAELatentActionVQVAE): latent actions on VVAE latent frames.

    x (B, T, C=16, H=64, W=64)
      -> VVAEtoLAMAdapter, per frame                      patches (B, T, N=256, P=256)
      -> encoder: stem (+ moments, + frame correlation)
         -> action head                                   z (B, T-1, K=3, D=128)
      -> [whitening]                                      z, per code: mean 0, covariance I
      -> quantizer (vq | fsq | gaussian)                  q (B, T-1, K, D), indices (B, T-1, K)
      -> decoder: frames 0..T-2, action of t-1 -> t
         added to the tokens of frame t-1                 (B, T-1, N, P)
      -> LAMtoVVAEAdapter, per frame, + frame t-1         predictions of frames 1..T-1
         (moved by the action's shifts, `prediction: shifted | shifted-local`)

Dimension keys: B batch, T frames in the window, C/H/W a latent frame, N patches per
frame, P patch dim, E transformer width, K codes per action, D dims per code, M
choices per code. The parts are chosen by name in `ModelConfig` (`stem`,
`frame_correlation`, `action_head`, `quantizer`, `whiten`, `prediction`); see stems.py,
heads.py, quantize/, whiten.py, decoder.py.
Built with no arguments, the model is the spec's: pair stem, token head, 3 VQ codes.

The decoder predicts the *change* from frame t-1 (its output projection starts at
zero, so an untrained model copies the previous frame): consecutive latents are
close, and the bottleneck only has to explain the change.

Rollout (optional training loss, and `rollout()` for evaluation and world-model use):
the decoder's predictions are passed back through the input adapter as the next
context frame. During training, the rollout starts from ground-truth frames 0..t0 with
t0 = T-1-h and predicts frames t0+1..T-1 using the inferred (straight-through) actions;
`rollout_loss` is its MSE. Gradients flow through the fed-back predictions.

Latents go in and come out unnormalised (spec: "VVAE latents don't need layer norm");
LayerNorm is used only inside the transformers, on tokens. The model knows nothing of
Ray or DDP wrappers; its only collectives are in distributed.py. Count its FLOPs with
`python -m lam.model.flops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lam.config import ModelConfig
from lam.model.adapters import LAMtoVVAEAdapter, VVAEtoLAMAdapter
from lam.model.decoder import PREDICTIONS, LatentActionDecoder
from lam.model.encoder import LatentActionEncoder
from lam.model.latent_target import FORWARD_TARGETS
from lam.model.moved import change_weighted_error
from lam.model.quantize import build_quantizer
from lam.model.quantize.base import action_radix
from lam.model.terms import ForwardPass, build_terms
from lam.model.whiten import Whitening


@dataclass
class LAMOutput:
    predictions: torch.Tensor  # (B, T-1, C, H, W): prediction of frame t at index t-1
    indices: torch.Tensor  # (B, T-1, K) long: codes of the transition t-1 -> t at index t-1
    loss: torch.Tensor  # scalar, with grad: the sum of `terms`
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, keys: metric_names
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the loss's weighted terms by name (loss_terms), with grad


class LatentActionModel(nn.Module):
    """Adapter -> encoder -> [whitening] -> quantizer -> decoder -> adapter; see the module docstring.

    One input adapter serves encoder and decoder (patches are computed once per window).
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = cfg = (config or ModelConfig()).validate()
        adapter_kw = dict(patch_dim=cfg.patch_dim, latent_size=cfg.latent_size, patch_grid=cfg.patch_grid)
        self.in_adapter = VVAEtoLAMAdapter(cfg.in_channels, **adapter_kw)
        quantizer = build_quantizer(cfg)
        code_dim = quantizer.code_dim
        # The loss's named terms, in the order they are added: each optional part below adds its
        # own where it is built (checkpoints restore parameters and optimizer state by name, so
        # the order in which parts register does not matter).
        self.loss_terms = ["prediction"]
        if quantizer.loss_names or cfg.whiten:
            self.loss_terms.append("bottleneck")  # the quantizer's weighted terms and the whitening penalty
        self.encoder = LatentActionEncoder(cfg, code_dim)
        self.quantizer = quantizer
        self.whiten = Whitening(cfg.num_codes, code_dim) if cfg.whiten else None
        self.decoder = LatentActionDecoder(cfg, code_dim)
        self.out_adapter = LAMtoVVAEAdapter(cfg.in_channels, **adapter_kw)
        shift = PREDICTIONS[cfg.prediction]
        self.shift = shift(cfg, code_dim) if shift else None
        # The optional terms the config turns on (terms.py), built before the forward target's
        # part so that parameters initialise in the order they always have.
        self.optional_terms = build_terms(cfg, code_dim)
        self.loss_terms += list(self.optional_terms)
        # With `forward_target: pixels+latent`: the forward model in a learned latent space (latent_target.py).
        latent = FORWARD_TARGETS[cfg.forward_target]
        self.latent = latent(cfg) if latent else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.encoder.head.init_weights()
        self.decoder.init_weights()
        if self.shift is not None:
            self.shift.init_weights()
        if self.latent is not None:
            self.latent.reset_target()

    @property
    def metric_names(self) -> list[str]:
        """The keys of `LAMOutput.metrics` (the loop logs them as train/NAME and val/NAME): the
        loss, its weighted terms as `loss/TERM` (they sum to it), then the unweighted parts.
        `vq_loss` is everything the bottleneck adds to the loss (its terms, weighted, and the
        whitening penalty); the quantizer's own terms follow under their names."""
        names = ["loss", *(f"loss/{term}" for term in self.loss_terms)]
        names += ["mse_loss", "mae_loss", "vq_loss", *self.quantizer.loss_names, "codebook_usage", "perplexity"]
        return names + [name for term in self.optional_terms.values() for name in term.metric_names(self)]

    def after_optimizer_step(self, applied: torch.Tensor | None = None) -> None:
        """Call after every training step's `optimizer.step()`, on every rank, on the unwrapped
        model (e.g. VQ's dead-code revival, which keeps the ranks' codebooks identical); with
        `applied` false (a device bool: the step was skipped) nothing changes."""
        self.quantizer.after_optimizer_step(applied)
        if self.latent is not None:
            self.latent.update_target(applied)

    def after_epoch(self) -> None:
        """Call at the end of every training epoch, before validation and the checkpoint, on
        every rank, on the unwrapped model (e.g. the gaussian bottleneck's k-means fit)."""
        self.quantizer.after_epoch()

    # ------------------------------------------------------------- internals
    def _check_frames(self, x: torch.Tensor, min_frames: int = 2) -> None:
        c = self.config
        want = (c.in_channels, c.latent_size, c.latent_size)
        if x.ndim != 5 or tuple(x.shape[2:]) != want:
            raise ValueError(f"expected latents of shape [B, T, {want[0]}, {want[1]}, {want[2]}], got {list(x.shape)}")
        if not min_frames <= x.shape[1] <= c.max_frames:
            raise ValueError(f"window has {x.shape[1]} frames; need {min_frames}..{c.max_frames} (model.max_frames)")

    def _encode(self, x: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Pre-quantisation actions (B, T-1, K, D) of frames x and their patches, whitened if
        configured; the whitening penalty (training only; None otherwise); and, in training with
        whitening, the actions as evaluation whitens them (running statistics, detached), which
        a continuous bottleneck reads its ids from (None otherwise)."""
        if self.whiten is None:
            return self.encoder(patches, x), None, None
        if not self.training:
            return *self.whiten(self.encoder(patches, x)), None
        z, z_head = self.encoder(patches, x, head_view=True)  # the penalty trains the head's output layers only
        # Batch statistics (what the decoder is trained on) and the running ones differ by a
        # batch's sampling error: a continuous bottleneck's ids and k-means read from the vectors
        # as evaluation whitens them (before this batch updates the running statistics), so a
        # window gets the same id in a training forward as in evaluation of the same model. A
        # discrete bottleneck's ids are its codes: no second whitening for it.
        z_ids = self.whiten.with_running_statistics(z.detach()) if self.quantizer.continuous else None
        return *self.whiten(z, z_head), z_ids

    def _predict(self, frames: torch.Tensor, patches: torch.Tensor, actions: torch.Tensor,
                 latent: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Next frames (B, S, C, H, W) from context frames 0..S-1 (B, S, C, H, W), their patches
        (B, S, N, P) and actions (B, S, K, D) of transitions 0->1 .. S-1->S. With `latent` (and
        `forward_target: pixels+latent`), also the decoder's hidden tokens and the online tokens
        it got: {"hidden": ..., "context": ...}."""
        context = self.latent.context(patches) if self.latent is not None else None
        decoded, hidden = self.decoder(patches, actions, context, hidden=True)  # (B, S, N, P), (B, S, N, E)
        delta = self.out_adapter(decoded)  # (B, S, C, H, W)
        base = frames if self.shift is None else self.shift(frames, actions, decoded)
        pred = base + delta  # the decoder predicts the change from the previous frame (moved, with `shifted`)
        return (pred, {"hidden": hidden, "context": context}) if latent else pred

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
    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, label_scale: torch.Tensor | None = None) -> LAMOutput:
        """x: (B, T, C, H, W) window of latent frames. labels (with a label head only): (B, T-1)
        true action of each transition, -1 where unknown; None: all unknown. label_scale: a
        0-dim tensor multiplying `label_weight` (the run's label schedule); None: 1."""
        self._check_frames(x)
        cfg = self.config
        patches = self.in_adapter(x)  # (B, T, N, P)
        z, whitening_penalty, z_ids = self._encode(x, patches)  # (B, T-1, K, D)
        q = self.quantizer(z, z_ids)
        pred, tokens = self._predict(x[:, :-1], patches[:, :-1], q.quantized, latent=True)  # (B, T-1, C, H, W), frames 1..T-1

        target = x[:, 1:].float()
        err = pred.float() - target
        mse_loss = err.pow(2).mean()
        prediction_loss = mse_loss if cfg.change_weight == 0 else change_weighted_error(err, x, cfg.change_weight)
        # Only terms that exist join the loss: under torch.compile (inductor) a constant zero
        # added to the loss made the compiled loss come back without a graph.
        bottleneck_loss = q.loss
        if whitening_penalty is not None:
            bottleneck_loss = whitening_penalty if bottleneck_loss is None else bottleneck_loss + whitening_penalty
        terms = {"prediction": prediction_loss}
        if bottleneck_loss is not None:
            terms["bottleneck"] = bottleneck_loss
        metrics = {
            "mse_loss": mse_loss,
            "mae_loss": err.abs().mean(),
            "vq_loss": mse_loss.new_zeros(()) if bottleneck_loss is None else bottleneck_loss,
            **q.losses,
            "codebook_usage": q.usage,
            "perplexity": q.perplexity,
        }
        step = ForwardPass(self, x, patches, q.quantized, pred, err, tokens, labels, label_scale)
        for name, term in self.optional_terms.items():
            terms[name], term_metrics = term(step)
            metrics |= term_metrics
        loss = _total(terms)
        zero = loss.new_zeros(())  # a declared term that adds nothing here (e.g. no whitening penalty in evaluation)
        metrics |= {"loss": loss, **{f"loss/{name}": zero for name in self.loss_terms}, **{f"loss/{name}": value for name, value in terms.items()}}
        return LAMOutput(
            predictions=pred,
            indices=q.indices,
            loss=loss,
            metrics={k: v.detach().float() for k, v in metrics.items()},
            terms=terms,
        )

    # ------------------------------------------------------------- inference
    def encode_actions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C, H, W) -> (indices (B, T-1, K) long, z (B, T-1, K, D) float32, whitened if
        configured). Index t-1 is the transition t-1 -> t, computed from frames <= t. Changes no
        state, in either mode: whitening uses its running statistics, as in evaluation."""
        self._check_frames(x)
        z = self.encoder(self.in_adapter(x), x).float()
        if self.whiten is not None:
            z = self.whiten.with_running_statistics(z)
        return self.quantizer.nearest(z), z

    def decode_with_actions(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-frame prediction with given actions.

        x (B, T, C, H, W) supplies context frames 0..T-2 (frame T-1 is never read), indices
        (B, T-1, K) the actions of transitions 0->1 .. T-2->T-1. Returns (B, T-1, C, H, W):
        index t-1 is the prediction of frame t from frames < t and actions of transitions <= t.
        """
        self._check_indices(indices, x.shape[0], x.shape[1] - 1)
        return self.decode_with_vectors(x, self.quantizer.lookup(indices))

    def decode_with_vectors(self, x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """As `decode_with_actions`, with action vectors (B, T-1, K, D) instead of ids: e.g. the
        `z` of `encode_actions` for a continuous bottleneck (what its decoder was trained on)."""
        self._check_frames(x)
        want = (x.shape[0], x.shape[1] - 1, self.config.num_codes, self.quantizer.code_dim)
        if tuple(vectors.shape) != want:
            raise ValueError(f"expected action vectors of shape {list(want)}, got {list(vectors.shape)}")
        frames = x[:, :-1]
        return self._predict(frames, self.in_adapter(frames), vectors)

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
        return (indices.long() * self._radix(indices.device)).sum(-1)

    def action_ids_to_indices(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of `action_ids`: (...) long -> (..., K) codes."""
        return (ids.long()[..., None] // self._radix(ids.device)) % self.config.num_embeddings

    def _radix(self, device) -> torch.Tensor:
        return action_radix(self.config.num_codes, self.config.num_embeddings, device)  # (K,)

    def _check_indices(self, indices: torch.Tensor, batch: int, steps: int) -> None:
        want = (batch, steps, self.config.num_codes)
        if tuple(indices.shape) != want:
            raise ValueError(f"expected action indices of shape {list(want)}, got {list(indices.shape)}")
        if indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"action indices must be integers, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.config.num_embeddings):
            raise ValueError(f"action indices must be in 0..{self.config.num_embeddings - 1}")


VVAELatentActionVQVAE = LatentActionModel  # the specification's name for it


def _total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss: its terms added in order (no constant zero start, for torch.compile's sake)."""
    values = iter(terms.values())
    total = next(values)
    for value in values:
        total = total + value
    return total
