"""torch.distributed: the only place the model talks to other ranks.

Every helper is a no-op (or the identity) when torch.distributed is not
initialised, so the model runs unchanged in one process. Under DDP every rank
must make the same calls in the same order, as DDP already requires of training
steps; the model's callers keep that (see `LatentActionModel.after_optimizer_step`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum_(t: torch.Tensor) -> None:
    """In place: t becomes the sum of t over all ranks."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_from_rank0_(t: torch.Tensor) -> None:
    """In place: every rank's t becomes rank 0's."""
    if is_distributed():
        dist.broadcast(t, src=0)


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's t (same shape on every rank), in rank order; [t] in one process."""
    if not is_distributed():
        return [t]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def all_reduce_sum_autograd(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks that gradients flow back through (each rank gets the summed gradient)."""
    return _AllReduceSum.apply(t) if is_distributed() else t


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
