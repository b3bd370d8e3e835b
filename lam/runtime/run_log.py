"""A run's metric records: `metrics.jsonl` in the run directory (readable without wandb) and wandb.

Only rank 0 of a training run logs (`RunLogger`); `lam eval --wandb_run` adds its
report to the same wandb run (`wandb_run_id`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lam.runtime import storage


def resolve_wandb_mode(mode: str) -> str:
    """`auto` means online when an API key is configured (env or ~/.netrc), else offline."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


class RunLogger:
    """Rank 0's sink for metrics: JSONL in the run directory, wandb, and the console."""

    def __init__(self, run_dir: str, local_dir: str, config: dict, wandb_mode: str, project: str, run_name: str, group: str = ""):
        self.metrics_path = storage.join(run_dir, "metrics.jsonl")
        self.records: list[dict] = []
        self.wandb_run = None
        self.wandb_dir = None
        if wandb_mode != "disabled":
            import wandb

            Path(local_dir).mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(
                project=project,
                name=run_name,
                id=wandb_run_id(run_name),  # same run name -> same wandb run, so a resume continues it
                resume="allow",
                group=group or None,
                dir=local_dir,
                mode=wandb_mode,
                config=config,
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
            self.wandb_dir = self.wandb_run.dir

    def resume_from(self, step: int) -> None:
        """Keep the records of the run being resumed up to `step`, dropping any logged after that checkpoint."""
        text = storage.read_text(self.metrics_path)
        if text:
            self.records = [r for r in map(json.loads, text.splitlines()) if r.get("step", 0) <= step]

    def log(self, record: dict, step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3), **record}
        self.records.append(record)
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)

    def flush(self) -> None:
        """Rewrite metrics.jsonl whole (small; also works on object stores that cannot append)."""
        storage.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.records))

    def close(self) -> None:
        self.flush()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def wandb_run_id(run_name: str) -> str:
    """A stable wandb run id for a run name, so resumes and `lam eval --wandb_run` reach the same run."""
    import hashlib

    return hashlib.sha1(run_name.encode()).hexdigest()[:16]


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
