"""Whitening of each code's pre-quantisation vector (`whiten: true`): batch norm without affine, decorrelating.

z (..., K, D) -> L_k^-1 (z_k - mean_k) per code position k, with L_k the Cholesky factor of
the covariance of z_k (D x D): each code's D dims come out with mean 0, variance 1 and no
correlation. In training, mean and covariance are the current batch's, over all ranks (a
differentiable all-reduce), with the gradient going through them as in batch norm;
evaluation uses running averages of them (updated by every training forward, identical on
every rank). Nothing is learned, so the encoder cannot undo it. With D = 1 this is batch
norm without affine.

Why: at initialisation the encoder's output is mostly a vector shared by all samples, so
every transition lands in the same quantiser bin and the decoder learns to ignore the
codes. Removing the shared offset and scale makes the differences between transitions
decide the bins from the first step. Per-dim scaling alone is not enough: the dims of z
then vary together along one direction, so a D-dim code still takes 2 values;
decorrelating makes each dimension carry its own information.

Batch norm makes the output blind to the raw offset and scale, so under training those
would drift freely and the running averages would lag behind (evaluation then put every
transition into one bin although training used several). So each training forward also
returns a penalty, the Gaussian KL-style mean^2 + tr(C) - log det(C) - D (zero at mean 0,
covariance I; averaged over codes) on the raw batch statistics. It cannot change the
whitened output, only keeps the raw statistics near the identity, so the running averages
match what training saw. (Returned, not kept on the module: a tensor with a graph stored
as a module attribute becomes a graph output of its own under torch.compile, and the
compiled backward then fails on its missing gradient.)
"""

from __future__ import annotations

import torch
from torch import nn

from lam.model.distributed import all_reduce_sum_, all_reduce_sum_autograd


class Whitening(nn.Module):
    def __init__(self, num_codes: int, dim: int, momentum: float = 0.1, eps: float = 1e-4):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(num_codes, dim))
        self.register_buffer("cov", torch.eye(dim).repeat(num_codes, 1, 1))  # (K, D, D)

    def _whiten(self, z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """z (..., K, D), mean (K, D), cov (K, D, D) -> L^-1 (z - mean) per code."""
        d = cov.shape[-1]
        # `_ex`: no check of the factorisation's status, which would read it back from the device
        # every step. cov + eps I is positive definite whenever cov is finite; a non-finite one
        # gives a non-finite output, a non-finite loss and a skipped step.
        chol = torch.linalg.cholesky_ex(cov + self.eps * torch.eye(d, device=cov.device)).L  # (K, D, D)
        centred = (z - mean).unsqueeze(-1)  # (..., K, D, 1)
        return torch.linalg.solve_triangular(chol.expand(*centred.shape[:-2], d, d), centred, upper=False).squeeze(-1)

    def _moments(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (K, D) and covariance (K, D, D) of z (..., K, D) over all ranks, differentiable."""
        k, d = self.mean.shape
        flat = z.reshape(-1, k, d)  # (n, K, D)
        sums = torch.cat([flat.sum(0).unsqueeze(-1), torch.einsum("nki,nkj->kij", flat, flat)], dim=-1)  # (K, D, 1+D)
        count = torch.tensor(float(flat.shape[0]), device=z.device)
        sums = all_reduce_sum_autograd(sums)
        all_reduce_sum_(count)
        mean = sums[..., 0] / count  # (K, D)
        cov = sums[..., 1:] / count - mean.unsqueeze(-1) * mean.unsqueeze(-2)  # (K, D, D)
        return mean, cov

    def _penalty(self, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        d = cov.shape[-1]
        reg = cov + self.eps * torch.eye(d, device=cov.device)
        return (mean.pow(2).sum(-1) + torch.diagonal(reg, dim1=-2, dim2=-1).sum(-1) - torch.logdet(reg) - d).mean()

    def with_running_statistics(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., K, D) -> z whitened with the running statistics, in any mode; changes nothing."""
        return self._whiten(z.float(), self.mean, self.cov)

    def forward(self, z: torch.Tensor, z_head: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z (..., K, D) -> (whitened z, penalty on the raw statistics; None in evaluation).
        `z_head`, if given, is the same value computed from detached encoder features: the
        penalty is taken on its statistics, so it trains only the encoder's output layer
        (which can meet it on its own) and leaves the rest of the encoder to the prediction loss."""
        z = z.float()
        if not self.training:
            return self.with_running_statistics(z), None
        mean, cov = self._moments(z)
        penalty = self._penalty(mean, cov) if z_head is None else self._penalty(*self._moments(z_head.float()))
        with torch.no_grad():
            # A non-finite batch (its step will be skipped) leaves the running statistics as they
            # were, decided on the device.
            finite = torch.isfinite(mean).all() & torch.isfinite(cov).all()
            self.mean.copy_(torch.where(finite, self.mean.lerp(mean.detach(), self.momentum), self.mean))
            self.cov.copy_(torch.where(finite, self.cov.lerp(cov.detach(), self.momentum), self.cov))
        return self._whiten(z, mean, cov), penalty
