"""Finite scalar quantisation (Mentzer et al. 2023, "FSQ: VQ-VAE made simple").

Each of the K codes is a `len(levels)`-dim vector; dimension j is squashed into
`levels[j]` bins with a tanh and rounded (straight-through), so a code is one of
prod(levels) = num_embeddings grid points and the mixed-radix action id works as
with VQ. Quantised values are scaled into [-1, 1]. There is no codebook to learn,
so nothing can collapse or die: every grid point stays reachable, and the decoder
sees codes that differ by a whole bin. FSQ needs no auxiliary loss.
"""

from __future__ import annotations

import math

import torch

from lam.config import FSQSettings, ModelConfig
from lam.model.quantize.base import Quantizer, QuantizerOutput


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


class FiniteScalarQuantizer(Quantizer):
    settings = FSQSettings

    def __init__(self, num_codes: int = 3, levels: tuple[int, ...] = (3, 4)):
        levels = tuple(int(level) for level in levels)
        super().__init__(num_codes, math.prod(levels), len(levels))
        self.levels = levels
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        # mixed radix over the dims of one code: index = sum_j digit_j * prod(levels[j+1:])
        basis = [math.prod(levels[j + 1:]) for j in range(len(levels))]
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "FiniteScalarQuantizer":
        return cls(cfg.num_codes, fsq_levels_for(cfg.num_embeddings))

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
        # A non-finite z (a step that will be skipped) must still give valid digits: as a long,
        # NaN is out of every range, and indexing with it fails (on a GPU, a device-side assert).
        digits = digits.nan_to_num(0.0)
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

    def forward(self, z: torch.Tensor, z_ids: torch.Tensor | None = None) -> QuantizerOutput:
        """z: (..., K, D) encoder outputs; `z_ids` is ignored (the ids are the codes, see `Quantizer.forward`)."""
        with torch.autocast(z.device.type, enabled=False):
            quantized, digits = self._quantize(z.float())  # value = grid point, gradient straight through
            indices = self._index(digits)
            _, usage, perplexity = self.code_statistics(indices)
        return QuantizerOutput(quantized=quantized, indices=indices, usage=usage, perplexity=perplexity)
