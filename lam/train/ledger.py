"""The run's ledger: what the training loop and its Ray Data read tasks tell each other.

One small actor per run holds two things:
- the windows the read tasks could not read (lam/train/ingest.py): they report them, and the
  loop collects each epoch's at its end;
- whether the driver asked the run to stop (it got SIGTERM, e.g. a spot node's notice): the
  loop asks now and then, and stops after a step checkpoint.

It is one actor, not two, and this module imports nothing but Ray: every run starts it in a
process of its own, and each actor process (and each module it imports) adds to the run's
start-up.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class RunLedger:
    def __init__(self):
        self.stop = False
        self.seen: set[tuple[str, int]] = set()
        self.by_epoch: dict[int, dict[tuple[str, int], str]] = {}

    def add_bad_window(self, epoch: int, file: str, start: int, problem: str) -> int:
        """Record one window that could not be read; returns how many distinct bad windows the run has met."""
        self.seen.add((file, start))
        self.by_epoch.setdefault(epoch, {})[file, start] = problem  # a retried read task reports again
        return len(self.seen)

    def take_bad_windows(self, epoch: int) -> list[tuple[str, int, str]]:
        """The epoch's bad windows as (file, start frame, "PATH: problem"), in the order first met."""
        return [(file, start, problem) for (file, start), problem in self.by_epoch.pop(epoch, {}).items()]

    def request_stop(self) -> None:
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop
