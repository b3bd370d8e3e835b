"""A training run's health checks: parameters identical on every rank, finite weights, a loss
that stays finite, and the windows an epoch could not read."""

from __future__ import annotations

import torch


@torch.no_grad()
def params_in_sync(model: torch.nn.Module, device) -> bool:
    """True when every rank holds bit-identical parameters (the DDP + codebook-revival invariant).

    Buffers are left out: the quantizer's buffer of recent encoder outputs is per rank by design.

    Compares a float64 fingerprint (sum and sum of squares) gathered from all ranks;
    one small collective per epoch.
    """
    tensors = list(model.parameters())
    fingerprint = torch.stack([
        sum(t.double().sum() for t in tensors if t.is_floating_point()),
        sum((t.double() ** 2).sum() for t in tensors if t.is_floating_point()),
    ]).to(device)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return True
    gathered = [torch.empty_like(fingerprint) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, fingerprint)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def report_bad_windows(bad: list[tuple[str, int, str]], epoch: int, shown: int = 10) -> int:
    """Rank 0: one warning line per window the epoch left out (the first `shown`); their number."""
    for _, _, problem in bad[:shown]:
        print(f"[lam] warning: epoch {epoch + 1}: skipped a window: {problem}", flush=True)
    if len(bad) > shown:
        print(f"[lam] warning: epoch {epoch + 1}: skipped {len(bad) - shown} more windows (`lam validate --full` lists every bad file)", flush=True)
    return len(bad)


@torch.no_grad()
def state_is_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


class NonFiniteLoss(RuntimeError):
    """The loss or gradient stayed non-finite for more than `max_nonfinite_steps` steps in a row."""
