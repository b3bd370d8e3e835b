"""Multi-code vector quantisation (the spec's bottleneck) with dead-code revival.

An action is `num_codes` (K) vectors of `codebook_dim` (D). Code position k has
its own codebook of `num_embeddings` (M) entries, `codebook[k]` of shape (M, D),
and each vector is snapped to the nearest entry of its own codebook (Euclidean).
One codebook per position (rather than one shared) lets each position specialise
and makes the K codes an ordered tuple, so the mixed-radix action id
`sum_k code_k * M**(K-1-k)` addresses all M**K actions without symmetry.

Losses (VQ-VAE, van den Oord et al. 2017), means over all elements:
  codebook_loss   = ||sg[z] - q||^2     moves entries toward encoder outputs
  commitment_loss = ||z - sg[q]||^2     keeps the encoder near its codes
  loss            = codebook_loss + commitment_weight * commitment_loss
and the straight-through estimator `z + sg[q - z]`: the forward value is the
codebook entry, the gradient goes to the encoder unchanged. The codebook itself
only learns through codebook_loss (and revival). Distances, losses and the
quantized output are float32 whatever autocast says, because bf16 rounding makes
near-ties between entries flip at random.

Codebook collapse is the known failure, so the quantizer measures and fights it:
  * `usage` and `perplexity` come from code counts summed over *all* ranks;
  * in training mode, each forward counts, per entry, the steps since it was
    last used (from the same all-reduced counts, so identical on every rank)
    and keeps this batch's encoder outputs (up to `recent_size` per code
    position) in a buffer. Only the latest batch: the encoder moves fast while
    the codebook is collapsed, and entries revived from outputs a few dozen
    steps old land where no current output is, and stay dead;
  * `after_optimizer_step()` re-initialises every entry unused for
    `dead_code_steps` steps from a random recent encoder output plus a little
    noise (so it separates from the entry that already serves that output),
    decided on the device: no host sync per step.
    Rank 0 picks from its own buffer, then broadcasts the codebook, so every
    rank ends with a bit-identical codebook. Revival changes a parameter in
    place; it must not happen inside forward (DDP's autograd hooks and the
    optimizer's step would see a moved tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lam.config import ModelConfig, VQSettings
from lam.model.distributed import broadcast_from_rank0_
from lam.model.quantize.base import Quantizer, QuantizerOutput


class VectorQuantizer(Quantizer):
    settings = VQSettings

    loss_names = ("codebook_loss", "commitment_loss")

    def __init__(
        self,
        num_codes: int = 3,
        num_embeddings: int = 12,
        codebook_dim: int = 128,
        commitment_weight: float = 0.25,
        dead_code_steps: int = 100,
        recent_size: int = 256,
        revive_noise: float = 0.05,
        seed: int = 0,
    ):
        super().__init__(num_codes, num_embeddings, codebook_dim)
        self.commitment_weight = commitment_weight
        self.dead_code_steps = dead_code_steps
        self.revive_noise = revive_noise  # noise std, relative to the per-dim std of recent encoder outputs
        self.seed = seed
        # N(0, 1) entries; the encoder's output head is initialised to give ~unit-variance vectors too.
        self.codebook = nn.Parameter(torch.randn(num_codes, num_embeddings, codebook_dim))  # (K, M, D)
        # Revival state: buffers, so checkpoints carry it.
        self.register_buffer("steps_since_used", torch.zeros(num_codes, num_embeddings, dtype=torch.long))
        self.register_buffer("recent", torch.zeros(num_codes, recent_size, codebook_dim))  # (K, R, D)
        self.register_buffer("recent_count", torch.zeros((), dtype=torch.long))  # valid rows of `recent`
        self.register_buffer("revive_calls", torch.zeros((), dtype=torch.long))  # revival checks so far: seeds revival's RNG
        self._recent_rows = 0  # valid rows of `recent`, known on the host (so revival needs no device read)
        self._checks: int | None = None  # revive_calls on the host, read once
        self._generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "VectorQuantizer":
        s = cfg.quantizer_settings
        return cls(cfg.num_codes, cfg.num_embeddings, s.codebook_dim, s.commitment_weight, s.dead_code_steps)

    # ----------------------------------------------------------------- lookups
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (..., K) long of the nearest entry for z (..., K, D). Pure: no state changes."""
        with torch.autocast(z.device.type, enabled=False):
            flat = z.detach().float().reshape(-1, self.num_codes, self.code_dim)  # (n, K, D)
            cb = self.codebook.detach().float()  # (K, M, D)
            # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2, in float32
            dist2 = (
                flat.pow(2).sum(-1, keepdim=True)  # (n, K, 1)
                - 2 * torch.einsum("nkd,kmd->nkm", flat, cb)  # (n, K, M)
                + cb.pow(2).sum(-1)[None]  # (1, K, M)
            )
            return dist2.argmin(-1).reshape(z.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors (..., K, D) float32 for indices (..., K)."""
        k = torch.arange(self.num_codes, device=indices.device)  # broadcasts against the last dim of indices
        return self.codebook[k, indices]

    # ----------------------------------------------------------------- forward
    def forward(self, z: torch.Tensor, z_ids: torch.Tensor | None = None) -> QuantizerOutput:
        """z: (..., K, D) encoder outputs; `z_ids` is ignored (the ids are the codes, see `Quantizer.forward`)."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            indices = self.nearest(z)  # (..., K)
            q = self.lookup(indices)  # (..., K, D), carries gradient to the codebook
            codebook_loss = F.mse_loss(q, z.detach())
            commitment_loss = F.mse_loss(z, q.detach())
            quantized = z + (q - z).detach()  # straight-through
            counts, usage, perplexity = self.code_statistics(indices)
            if self.training:
                self._track(counts, z)
        return QuantizerOutput(
            quantized=quantized, indices=indices, usage=usage, perplexity=perplexity,
            losses={"codebook_loss": codebook_loss, "commitment_loss": commitment_loss},
            loss=codebook_loss + self.commitment_weight * commitment_loss,
        )

    @torch.no_grad()
    def _track(self, counts: torch.Tensor, z: torch.Tensor) -> None:
        """Training-step bookkeeping for revival: staleness per entry, and this batch's encoder outputs."""
        self.steps_since_used += 1
        self.steps_since_used.masked_fill_(counts > 0, 0)  # masked_fill: no host sync on GPU
        if self.dead_code_steps <= 0:
            return
        vecs = z.detach().reshape(-1, self.num_codes, self.code_dim).transpose(0, 1)  # (K, n, D)
        n, size = vecs.shape[1], self.recent.shape[1]
        if n > size:  # keep `size` vectors spread evenly over the batch
            vecs = vecs[:, torch.linspace(0, n - 1, size, device=vecs.device).long()]
        self.recent[:, : vecs.shape[1]] = vecs
        self.recent_count.fill_(vecs.shape[1])
        self._recent_rows = vecs.shape[1]

    # ----------------------------------------------------------------- revival
    def after_optimizer_step(self, applied: torch.Tensor | None = None) -> None:
        self.revive_dead_codes(applied)

    @torch.no_grad()
    def revive_dead_codes(self, applied: torch.Tensor | None = None) -> torch.Tensor:
        """Re-initialise entries unused for `dead_code_steps` training steps; return how many
        (a 0-dim tensor on the codebook's device: reading it waits for the device). With
        `applied` false (the training step was skipped) no entry is revived; the check is
        still counted, so the draws stay aligned with a resumed run's.

        Call on every rank after `optimizer.step()`, on the unwrapped module. Decided on the
        device, without reading anything back to the host, so a GPU step never waits here:
        every step draws a candidate for every entry and `torch.where` keeps the candidates of
        the dead ones. Rank 0's staleness counters decide and rank 0's recent encoder outputs
        supply the new entries; the codebook is then broadcast, so all ranks stay bit-identical.
        """
        device = self.codebook.device
        if self.dead_code_steps <= 0 or self._recent_rows == 0:  # off, or no encoder outputs seen yet
            return torch.zeros((), dtype=torch.long, device=device)
        broadcast_from_rank0_(self.steps_since_used)  # rank 0's decision is every rank's
        dead = self.steps_since_used >= self.dead_code_steps  # (K, M)
        if applied is not None:
            dead = dead & applied
        self.codebook.data.copy_(torch.where(dead[..., None], self._candidates(), self.codebook.data))
        broadcast_from_rank0_(self.codebook.data)
        self.steps_since_used.masked_fill_(dead, 0)
        return dead.sum()

    def _candidates(self) -> torch.Tensor:
        """(K, M, D): for every entry, a random recent encoder output of its code position plus
        noise. Distinct sources within a position where there are enough outputs, so two revived
        entries do not start on the same vector. The generator is seeded from the quantizer's seed
        and a count of revival checks kept in a buffer (so a resumed run draws what an
        uninterrupted one would); the count is read from the device once per process."""
        device, (K, M, D) = self.codebook.device, self.codebook.shape
        if self._checks is None:
            self._checks = int(self.revive_calls.item())
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        gen = self._generator.manual_seed(self.seed * 1_000_003 + self._checks)
        self._checks += 1
        self.revive_calls += 1
        pool = self.recent[:, : self._recent_rows].float()  # (K, R, D)
        order = torch.rand(K, pool.shape[1], generator=gen, device=device).argsort(-1)  # a random permutation per position
        picks = order[:, torch.arange(M, device=device) % pool.shape[1]]  # (K, M)
        noise = torch.randn(K, M, D, generator=gen, device=device)
        spread = pool.std(1, unbiased=False)[:, None]  # (K, 1, D)
        new = pool.gather(1, picks[..., None].expand(K, M, D)) + self.revive_noise * spread * noise
        return new.to(self.codebook.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._checks = None  # re-read the loaded count
        self._recent_rows = int(state_dict.get(prefix + "recent_count", torch.zeros(())).item())
