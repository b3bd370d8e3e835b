"""Metric bookkeeping for the training loop: averaging over steps and ranks, and logging (rank 0).

Names follow the spec exactly: `train/loss`, `train/mse_loss`, `train/mae_loss`,
`train/vq_loss`, `train/codebook_loss`, `train/commitment_loss`,
`train/codebook_usage`, the same under `val/`, `train/lr`, `train/grad_norm`,
`train/rollout_loss` (when rollout is on); plus `*/perplexity`,
`train/samples_per_s`, `epoch` and `step`.

Every logged record goes to `metrics.jsonl` in the run directory (readable
without wandb) and, when wandb is on, to wandb.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from lam.train import storage


class MeanTracker:
    """Weighted means of scalar metrics over steps, all-reduced across ranks on `compute`.

    Tensor metrics are summed where they live (on the GPU in GPU runs): `add` never waits
    for the device, so the host can queue the next step while this one runs. `compute` reads
    everything back at once.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.weight = 0.0

    def add(self, metrics: dict[str, torch.Tensor | float], weight: float) -> None:
        for k, v in metrics.items():
            v = v.detach().double() * weight if torch.is_tensor(v) else float(v) * weight
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.weight += weight

    def compute(self, prefix: str, keys: list[str], device) -> dict[str, float]:
        """Means over all ranks. `keys` must be the same list on every rank (a rank may have seen no batch)."""
        parts = [torch.as_tensor(self.sums.get(k, 0.0), dtype=torch.float64, device=device).reshape(()) for k in keys]
        values = torch.stack(parts + [torch.tensor(self.weight, dtype=torch.float64, device=device)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
        values = values.tolist()
        total = values[-1]
        if total == 0:
            return {}
        return {f"{prefix}/{k}": values[i] / total for i, k in enumerate(keys)}


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
