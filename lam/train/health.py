"""A training run's health checks: parameters identical on every rank, finite weights, a loss
that stays finite, and the windows an epoch could not read."""

from __future__ import annotations

from pathlib import Path

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


class SkippedSteps:
    """Steps skipped because their loss or gradient was not finite, counted on the device.

    `add` never reads anything back, so a GPU step does not wait for the previous one; `check`
    reads the counts (one host sync), warns about the steps skipped since the last check and
    raises NonFiniteLoss once a run of skipped steps is longer than `limit`. The training loop
    checks every `CHECK_EVERY` steps and at the end of every epoch, on every rank at the same
    steps (the counts are identical on every rank), so a diverged run stops at most
    CHECK_EVERY steps after its limit.
    """

    CHECK_EVERY = 16

    def __init__(self, device, limit: int):
        self.limit = limit
        self.total = torch.zeros((), dtype=torch.long, device=device)
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self.longest = torch.zeros((), dtype=torch.long, device=device)
        self.reported = 0

    def add(self, applied: torch.Tensor) -> None:
        skipped = (~applied).long()
        self.total += skipped
        self.in_a_row = (self.in_a_row + 1) * skipped
        self.longest = torch.maximum(self.longest, self.in_a_row)

    def check(self, step: int, lr: float, warn: bool) -> int:
        """The number of steps skipped so far (reads the device)."""
        total, longest = (int(v) for v in torch.stack([self.total, self.longest]).tolist())
        if warn and total > self.reported:
            print(f"[lam] warning: {total - self.reported} step(s) up to step {step} skipped: the loss or gradient "
                  "was not finite", flush=True)
        self.reported = total
        if longest > self.limit:
            raise NonFiniteLoss(f"the loss or gradient was not finite for {longest} steps in a row (up to step {step}, "
                                f"more than --max_nonfinite_steps {self.limit}; lr {lr:.3g}); lower --learning_rate or "
                                "check the data (`lam validate --full`)")
        return total


def maybe_inject_fault(at_step: int, step: int, rank: int, run_dir: str) -> None:
    """Testing hook: fail once (a marker file remembers) so failure recovery can be exercised."""
    if not at_step or step != at_step or rank != 0:
        return
    marker = Path(run_dir) / ".fault_injected"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"step {step}\n")
    raise RuntimeError(f"injected fault at step {step} (inject_fault_at_step)")
