"""Where the benchmarks write by default: outside the source tree, so that a run leaves the
checkout as it was. Reports the docs cite are copied into bench/results/ on purpose (`--out`)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench_home() -> Path:
    """$LAM_BENCH_HOME, else ~/.cache/lam-bench: generated datasets (data/), reports, run folders."""
    return Path(os.environ.get("LAM_BENCH_HOME") or Path.home() / ".cache" / "lam-bench")
