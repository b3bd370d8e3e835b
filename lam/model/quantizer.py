"""Multi-code vector quantizer with dead-code revival.

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
  * `usage` (fraction of the K*M entries picked at least once in the batch) and
    `perplexity` (exp of the entropy of code use, averaged over the K positions,
    1..M) come from code counts summed over *all* ranks;
  * in training mode, each forward counts, per entry, the steps since it was
    last used (from the same all-reduced counts, so identical on every rank)
    and keeps this batch's encoder outputs (up to `recent_size` per code
    position) in a buffer. Only the latest batch: the encoder moves fast while
    the codebook is collapsed, and entries revived from outputs a few dozen
    steps old land where no current output is, and stay dead;
  * `revive_dead_codes()`, called by the training loop after `optimizer.step()`,
    re-initialises every entry unused for `dead_code_steps` steps from a random
    recent encoder output plus a little noise (so it separates from the entry
    that already serves that output). Rank 0 picks from its own buffer, then
    broadcasts the codebook, so every rank ends with a bit-identical codebook.
Revival changes a parameter in place; it must not happen inside forward
(DDP's autograd hooks and the optimizer's step would see a moved tensor).

All torch.distributed calls live in the marked section at the bottom; they are
no-ops when torch.distributed is not initialized. Under DDP every rank must call
`forward` (with `sync_stats=True`, the default) and `revive_dead_codes` the same
number of times, as DDP already requires for training steps. For evaluation
that only some ranks run, set `quantizer.sync_stats = False` (metrics are then
per rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def count_codes(indices: torch.Tensor, num_codes: int, num_embeddings: int) -> torch.Tensor:
    """How often each entry is used in `indices` (..., K): (K, M) long, local to this rank."""
    flat = indices.reshape(-1, num_codes).t()  # (K, n)
    counts = torch.zeros(num_codes, num_embeddings, dtype=torch.long, device=indices.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat))


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (..., K, D) float32: value = codebook entries, gradient -> z (straight-through)
    indices: torch.Tensor  # (..., K) long
    loss: torch.Tensor  # codebook_loss + commitment_weight * commitment_loss
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    usage: torch.Tensor  # fraction of the K*M entries used by the (all-rank) batch
    perplexity: torch.Tensor  # exp(entropy) of code use, mean over the K positions


class MultiCodeQuantizer(nn.Module):
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
        super().__init__()
        self.num_codes, self.num_embeddings, self.codebook_dim = num_codes, num_embeddings, codebook_dim
        self.commitment_weight = commitment_weight
        self.has_loss = True  # codebook + commitment terms for the model's loss
        self.dead_code_steps = dead_code_steps
        self.revive_noise = revive_noise  # noise std, relative to the per-dim std of recent encoder outputs
        self.seed = seed
        self.sync_stats = True  # all-reduce code counts across ranks (see module docstring)
        # N(0, 1) entries; the encoder's output head is initialised to give ~unit-variance vectors too.
        self.codebook = nn.Parameter(torch.randn(num_codes, num_embeddings, codebook_dim))  # (K, M, D)
        # Revival state: buffers, so checkpoints carry it.
        self.register_buffer("steps_since_used", torch.zeros(num_codes, num_embeddings, dtype=torch.long))
        self.register_buffer("recent", torch.zeros(num_codes, recent_size, codebook_dim))  # (K, R, D)
        self.register_buffer("recent_count", torch.zeros((), dtype=torch.long))  # valid rows of `recent`
        self.register_buffer("revive_calls", torch.zeros((), dtype=torch.long))  # seeds revival's RNG

    # ----------------------------------------------------------------- lookups
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (..., K) long of the nearest entry for z (..., K, D). Pure: no state changes."""
        with torch.autocast(z.device.type, enabled=False):
            flat = z.detach().float().reshape(-1, self.num_codes, self.codebook_dim)  # (n, K, D)
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

    def code_counts(self, indices: torch.Tensor) -> torch.Tensor:
        """How often each entry is used in `indices` (..., K): (K, M) long, local to this rank."""
        return count_codes(indices, self.num_codes, self.num_embeddings)

    # ----------------------------------------------------------------- forward
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (..., K, D) encoder outputs."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            indices = self.nearest(z)  # (..., K)
            q = self.lookup(indices)  # (..., K, D), carries gradient to the codebook
            codebook_loss = F.mse_loss(q, z.detach())
            commitment_loss = F.mse_loss(z, q.detach())
            quantized = z + (q - z).detach()  # straight-through

            with torch.no_grad():
                counts = self.code_counts(indices)
                if self.sync_stats:
                    _all_reduce_sum_(counts)  # global counts: identical on every rank from here on
                usage, perplexity = usage_and_perplexity(counts)
                if self.training:
                    self._track(counts, z)

        return QuantizerOutput(
            quantized=quantized,
            indices=indices,
            loss=codebook_loss + self.commitment_weight * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            usage=usage,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def _track(self, counts: torch.Tensor, z: torch.Tensor) -> None:
        """Training-step bookkeeping for revival: staleness per entry, and this batch's encoder outputs."""
        self.steps_since_used += 1
        self.steps_since_used.masked_fill_(counts > 0, 0)  # masked_fill: no host sync on GPU
        if self.dead_code_steps <= 0:
            return
        vecs = z.detach().reshape(-1, self.num_codes, self.codebook_dim).transpose(0, 1)  # (K, n, D)
        n, size = vecs.shape[1], self.recent.shape[1]
        if n > size:  # keep `size` vectors spread evenly over the batch
            vecs = vecs[:, torch.linspace(0, n - 1, size, device=vecs.device).long()]
        self.recent[:, : vecs.shape[1]] = vecs
        self.recent_count.fill_(vecs.shape[1])

    # ----------------------------------------------------------------- revival
    @torch.no_grad()
    def revive_dead_codes(self) -> int:
        """Re-initialise entries unused for `dead_code_steps` training steps; return how many.

        Call on every rank after `optimizer.step()`, on the unwrapped module. Rank 0's
        staleness counters decide and rank 0's recent encoder outputs supply the new
        entries; the codebook is then broadcast, so all ranks stay bit-identical.
        """
        if self.dead_code_steps <= 0:
            return 0
        _broadcast_from_rank0_(self.steps_since_used)  # so every rank takes the same branch below
        dead = self.steps_since_used >= self.dead_code_steps  # (K, M)
        if not bool(dead.any()):
            return 0
        revived = torch.zeros((), dtype=torch.long, device=self.codebook.device)
        if _rank() == 0:
            revived.fill_(self._replace_entries(dead))
        _broadcast_from_rank0_(self.codebook.data)
        _broadcast_from_rank0_(revived)
        if revived.item() > 0:
            self.steps_since_used.masked_fill_(dead, 0)
        self.revive_calls += 1
        return int(revived.item())

    def _replace_entries(self, dead: torch.Tensor) -> int:
        """Overwrite the dead entries with recent encoder outputs + noise (this rank's buffer). Returns the count."""
        filled = int(self.recent_count.item())
        if filled == 0:
            return 0  # no encoder outputs seen yet: nothing to revive from
        gen = torch.Generator().manual_seed(self.seed + int(self.revive_calls.item()))
        for k in range(self.num_codes):
            entries = dead[k].nonzero().flatten()
            if entries.numel() == 0:
                continue
            pool = self.recent[k, :filled].float()  # (filled, D)
            # Distinct sources where possible, so two revived entries do not start on the same vector.
            picks = torch.randperm(filled, generator=gen).repeat(-(-entries.numel() // filled))[: entries.numel()]
            noise = torch.randn(entries.numel(), self.codebook_dim, generator=gen)
            spread = pool.std(0, unbiased=False)  # (D,)
            new = pool[picks.to(pool.device)] + self.revive_noise * spread * noise.to(pool.device)
            self.codebook.data[k, entries] = new.to(self.codebook.dtype)
        return int(dead.sum().item())


def usage_and_perplexity(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From code counts (K, M): fraction of entries used, and mean over k of exp(entropy of p_k)."""
    counts = counts.float()
    usage = (counts > 0).float().mean()
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1)  # (K, M)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)  # (K,), 0 * log(eps) = 0 for unused entries
    return usage, entropy.exp().mean()


# ---------------------------------------------------------------------------
# torch.distributed: the only place the model talks to other ranks.
# Each helper is a no-op when torch.distributed is not available/initialized.
# ---------------------------------------------------------------------------
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _all_reduce_sum_(t: torch.Tensor) -> None:
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _broadcast_from_rank0_(t: torch.Tensor) -> None:
    if _distributed():
        dist.broadcast(t, src=0)


# ---------------------------------------------------------------------------
# Finite scalar quantisation (Mentzer et al. 2023, "FSQ: VQ-VAE made simple")
# ---------------------------------------------------------------------------
def fsq_levels_for(num_embeddings: int, spec: str = "") -> tuple[int, ...]:
    """Levels per dimension of one FSQ code whose product is `num_embeddings`.

    `spec` ("3,4") gives them explicitly; "" factorises: prime factors, with pairs of 2s merged
    into 4s (8 -> (2, 4), 12 -> (3, 4), 16 -> (4, 4), 5 -> (5,), 27 -> (3, 3, 3)).
    """
    if spec:
        levels = tuple(int(s) for s in str(spec).replace(" ", "").split(",") if s)
        if not levels or any(level < 2 for level in levels):
            raise ValueError(f"fsq_levels must be integers >= 2 separated by commas, got {spec!r}")
        if math.prod(levels) != num_embeddings:
            raise ValueError(f"fsq_levels {spec!r} give {math.prod(levels)} entries per code, "
                             f"but num_embeddings is {num_embeddings}")
        return levels
    if num_embeddings < 2:
        raise ValueError(f"FSQ needs num_embeddings >= 2, got {num_embeddings}")
    n, primes, p = num_embeddings, [], 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    twos = primes.count(2)
    levels = [4] * (twos // 2) + [2] * (twos % 2) + [q for q in primes if q != 2]
    return tuple(sorted(levels))


class FiniteScalarQuantizer(nn.Module):
    """FSQ with the same interface as MultiCodeQuantizer: K codes, each a point of a fixed grid.

    Code position k is a `len(levels)`-dim vector; dimension j is squashed into
    `levels[j]` bins with a shifted tanh and rounded (straight-through), so each code is
    one of prod(levels) = num_embeddings grid points and the mixed-radix action id works
    as with VQ. Quantised values are scaled into [-1, 1]. There is no codebook to learn,
    so nothing can collapse or die: every grid point stays reachable, and the decoder sees
    codes that differ by a whole bin (not by the small spread of encoder outputs around
    a shared offset, which is what kept VQ codes near-constant early in training).

    `loss`, `codebook_loss` and `commitment_loss` are zero (FSQ needs no auxiliary loss);
    `usage` and `perplexity` are reported as for VQ. `revive_dead_codes()` is a no-op.
    """

    def __init__(self, num_codes: int = 3, levels: tuple[int, ...] = (3, 4)):
        super().__init__()
        self.num_codes = num_codes
        self.levels = tuple(int(level) for level in levels)
        self.num_embeddings = math.prod(self.levels)
        self.codebook_dim = len(self.levels)
        self.commitment_weight = 0.0
        self.has_loss = False  # `loss` is a constant zero, which the model leaves out of its loss
        self.sync_stats = True
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.long), persistent=False)
        # mixed radix over the dims of one code: index = sum_j digit_j * prod(levels[j+1:])
        basis = [math.prod(self.levels[j + 1:]) for j in range(len(self.levels))]
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (..., D) float32 -> (values in [-1, 1] with a straight-through gradient, digits 0..L-1 long).

        s = tanh(z) in (-1, 1) is cut into L equal bins, digit d is the bin, and the value is the
        bin's centre rescaled so that the outer centres are -1 and 1: (d - (L-1)/2) / ((L-1)/2).
        The bins are symmetric about 0 for every L (z = 0 is a bin centre for odd L and a bin
        edge for even L), so unit-variance inputs use every level. The gradient is that of
        s * L / (L-1), the continuous value that the rounding snaps to the centres.
        """
        levels = self._levels.to(z.dtype)
        s = torch.tanh(z)
        digits = torch.minimum(((s + 1) * 0.5 * levels).floor(), levels - 1).clamp_min(0)
        half = (levels - 1) / 2
        values = (digits - half) / half
        smooth = s * levels / (levels - 1)
        return smooth + (values - smooth).detach(), digits.long()

    def _index(self, digits: torch.Tensor) -> torch.Tensor:
        return (digits * self._basis).sum(-1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (..., K) long for z (..., K, D). Pure: no state changes."""
        with torch.autocast(z.device.type, enabled=False):
            return self._index(self._quantize(z.detach().float())[1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Grid points (..., K, D) float32 in [-1, 1] for indices (..., K)."""
        digits = (indices.long()[..., None] // self._basis) % self._levels  # (..., K, D)
        half = (self._levels.float() - 1) / 2
        return (digits.float() - half) / half

    def code_counts(self, indices: torch.Tensor) -> torch.Tensor:
        return count_codes(indices, self.num_codes, self.num_embeddings)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (..., K, D) encoder outputs."""
        with torch.autocast(z.device.type, enabled=False):
            quantized, digits = self._quantize(z.float())  # value = grid point, gradient straight through
            indices = self._index(digits)
            with torch.no_grad():
                counts = self.code_counts(indices)
                if self.sync_stats:
                    _all_reduce_sum_(counts)
                usage, perplexity = usage_and_perplexity(counts)
            zero = quantized.new_zeros(())
        return QuantizerOutput(quantized=quantized, indices=indices, loss=zero, codebook_loss=zero,
                               commitment_loss=zero, usage=usage, perplexity=perplexity)

    def revive_dead_codes(self) -> int:
        return 0


class RunningStandardize(nn.Module):
    """Whitening of each code's pre-quantisation vector (batch norm without affine, decorrelating).

    z (..., K, D) -> L_k^-1 (z_k - mean_k) per code position k, with L_k the Cholesky factor of
    the covariance of z_k (D x D): each code's D dims come out with mean 0, variance 1 and no
    correlation. In training, mean and covariance are the current batch's, over all ranks (a
    differentiable all-reduce), with the gradient going through them as in batch norm;
    evaluation uses running averages of them (updated by every training forward, identical on
    every rank). Nothing is learned, so the encoder cannot undo it. With D = 1 this is batch
    norm without affine.

    Why: at initialisation the action token's output is mostly a vector shared by all
    samples (norm ~4.5 against a per-sample spread ~0.5 in the demo), so every transition
    lands in the same quantiser bin and the decoder learns to ignore the codes. Removing the
    shared offset and scale makes the differences between transitions decide the bins from
    the first step. Per-dim scaling alone is not enough: the dims of z then vary together
    along one direction, so a D-dim code still takes 2 values; decorrelating makes each
    dimension carry its own information (for the agent: which way along y, which along x).

    Batch norm makes the output blind to the raw offset and scale, so under training those
    would drift freely and the running averages would lag behind (evaluation then put every
    transition into one bin although training used several). So each training forward also
    returns a penalty, the Gaussian KL-style mean^2 + tr(C) - log det(C) - D (zero at mean 0,
    covariance I; averaged over codes) on the raw batch statistics. It cannot change the
    whitened output, only keeps the raw statistics near the identity, so the running averages
    match what training saw. (Returned, not kept on the module: a tensor with a graph stored
    as a module attribute became a graph output of its own under torch.compile, and the
    compiled backward then failed on its missing gradient.)
    """

    def __init__(self, num_codes: int, dim: int, momentum: float = 0.1, eps: float = 1e-4):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(num_codes, dim))
        self.register_buffer("cov", torch.eye(dim).repeat(num_codes, 1, 1))  # (K, D, D)

    def _whiten(self, z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """z (..., K, D), mean (K, D), cov (K, D, D) -> L^-1 (z - mean) per code."""
        d = cov.shape[-1]
        chol = torch.linalg.cholesky(cov + self.eps * torch.eye(d, device=cov.device))  # (K, D, D)
        centred = (z - mean).unsqueeze(-1)  # (..., K, D, 1)
        return torch.linalg.solve_triangular(chol.expand(*centred.shape[:-2], d, d), centred, upper=False).squeeze(-1)

    def _moments(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (K, D) and covariance (K, D, D) of z (..., K, D) over all ranks, differentiable."""
        k, d = self.mean.shape
        flat = z.reshape(-1, k, d)  # (n, K, D)
        sums = torch.cat([flat.sum(0).unsqueeze(-1), torch.einsum("nki,nkj->kij", flat, flat)], dim=-1)  # (K, D, 1+D)
        count = torch.tensor(float(flat.shape[0]), device=z.device)
        sums = _all_reduce_sum_autograd(sums)
        _all_reduce_sum_(count)
        mean = sums[..., 0] / count  # (K, D)
        cov = sums[..., 1:] / count - mean.unsqueeze(-1) * mean.unsqueeze(-2)  # (K, D, D)
        return mean, cov

    def _penalty(self, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        d = cov.shape[-1]
        reg = cov + self.eps * torch.eye(d, device=cov.device)
        return (mean.pow(2).sum(-1) + torch.diagonal(reg, dim1=-2, dim2=-1).sum(-1) - torch.logdet(reg) - d).mean()

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., K, D) -> z whitened with the running statistics, in any mode; changes nothing."""
        return self._whiten(z.float(), self.mean, self.cov)

    def forward(self, z: torch.Tensor, z_head: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z (..., K, D) -> (whitened z, penalty on the raw statistics; None in evaluation).
        `z_head`, if given, is the same value computed from detached encoder features: the
        penalty is taken on its statistics, so it trains only the encoder's output layer
        (which can meet it on its own) and leaves the rest of the encoder to the prediction loss."""
        z = z.float()
        if not self.training:
            return self.standardize(z), None
        mean, cov = self._moments(z)
        penalty = self._penalty(mean, cov) if z_head is None else self._penalty(*self._moments(z_head.float()))
        with torch.no_grad():
            self.mean.lerp_(mean.detach(), self.momentum)
            self.cov.lerp_(cov.detach(), self.momentum)
        return self._whiten(z, mean, cov), penalty


def _all_reduce_sum_autograd(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks that gradients flow back through (each rank gets the summed gradient)."""
    return _AllReduceSum.apply(t) if _distributed() else t


class _AllReduceSum(torch.autograd.Function):
    """out = sum over ranks of t; d(sum of all ranks' losses)/dt = sum over ranks of d loss/d out."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad
