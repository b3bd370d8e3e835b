"""The driver side of training: start or join Ray, build the datasets, run a TorchTrainer.

    from lam.config import RunConfig
    from lam.train.launch import train
    cfg = RunConfig(); cfg.data.data_dir = "demo_data"; cfg.train.num_workers = 2
    result = train(cfg)

Without `RAY_ADDRESS` a local Ray is started (bound to 127.0.0.1); with it, the
same code runs on that cluster.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
from ray._private import ray_constants
from ray.train.torch import TorchTrainer
from ray.train.v2.api.config import LoggingConfig

from lam.config import RunConfig, dump_yaml
from lam.data.manifest import load_manifest
from lam.errors import UserError
from lam.train import storage
from lam.train.ingest import build_datasets
from lam.train.loop import train_loop_per_worker
from lam.train.metrics import resolve_wandb_mode

OVERFIT_MSE, OVERFIT_MAE = 0.01, 0.05  # the spec's overfit success criterion
# ...and the model must have learned something: MSE at most 0.9x copying the last frame
# (on smooth data copy-last alone can be under 0.01, and an untrained model equals it).
OVERFIT_BASELINE_RATIO = 0.9


def init_ray(min_cpus: int = 0) -> None:
    """Join the cluster in RAY_ADDRESS, or start a private local one on 127.0.0.1.

    A bare `ray.init()` would join any cluster recorded under /tmp/ray; address="local"
    always starts our own. Logical CPUs are at least `min_cpus` so Ray Data read tasks
    have room beside the training workers on small machines.
    """
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": True, "logging_level": "WARNING"}
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # worker prints once, not twice
    os.environ.setdefault("WANDB_SILENT", "true")  # we print where the wandb run is ourselves
    # Train gives up on starting a worker group after 60 s by default; a busy small machine
    # (several trials starting at once) can take longer. Inherited by every Ray process.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
        return
    # Ray turns 127.0.0.1 into the machine's routable address unless cluster mode is
    # off; off, every process of the local cluster (and DDP's rendezvous) uses loopback.
    # The env var reaches the processes Ray starts; this process read it at import.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False")
    # Ray Train's placement-group cleaner finds the dashboard (state API) by looking for "the"
    # local cluster, and gives up when it sees several on one machine: name ours explicitly.
    dashboard_port = free_local_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, min_cpus),
        include_dashboard=True,  # Ray Train's state API (placement-group cleanup) needs it
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        **quiet,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Logical CPUs left for Ray Data read tasks beside a run's training workers. A sweep packs
# several trials on a cluster and gives each one (lam.tune.sweep.DATA_CPUS_PER_TRIAL).
DATA_CPUS_PER_RUN = 2


def cpus_needed(cfg: RunConfig, data_cpus: int = DATA_CPUS_PER_RUN) -> int:
    """Logical CPUs a run needs: its training workers' plus `data_cpus` for read tasks."""
    return math.ceil(cfg.train.num_workers * cfg.train.cpus_per_worker) + data_cpus


@dataclass
class TrainOutcome:
    run_dir: str
    checkpoint_path: str | None
    metrics: dict
    wandb_dir: str | None
    passed: bool | None  # test mode only


def prepare(cfg: RunConfig):
    """Start-up checks that would otherwise fail hours in: config, manifest, every listed file."""
    cfg.validate()
    if cfg.train.batch_size % cfg.train.num_workers:
        raise UserError(f"batch_size {cfg.train.batch_size} must be a multiple of num_workers {cfg.train.num_workers} (it is split evenly across workers)")
    if cfg.train.use_gpu and not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--use_gpu was given but this machine has no CUDA GPU (and RAY_ADDRESS names no cluster)")
    manifest = load_manifest(cfg.data.manifest, cfg.data.data_dir)
    cfg.resolve_run_name()
    cfg.train.wandb_mode = resolve_wandb_mode(cfg.train.wandb_mode)
    return manifest


def build_trainer(cfg: RunConfig, manifest, callbacks=(), verbose: bool = True) -> tuple[TorchTrainer, str, str]:
    """The TorchTrainer for one run, and its run directory (local path or URI) and local directory.

    Writes the run's config.yaml first. `callbacks` are Ray Train callbacks (a Tune sweep
    passes the one that forwards each report to Tune).
    """
    t = cfg.train
    storage_path = storage.resolve_storage_path(t.storage_path)
    run_dir = storage.join(storage_path, t.run_name)
    local_dir = run_dir if not storage.is_uri(run_dir) else os.path.abspath(os.path.join("runs", t.run_name))
    storage.write_text(storage.join(run_dir, "config.yaml"), dump_yaml(cfg))

    init_ray(min_cpus=cpus_needed(cfg))
    ray.data.DataContext.get_current().enable_progress_bars = False  # here too: a Tune trial is another process
    datasets, sizes = build_datasets(cfg, manifest)
    if verbose:
        print(f"[lam] run {t.run_name}: outputs in {run_dir}", flush=True)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "run_dir": run_dir, "local_dir": local_dir, "sizes": sizes},
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
        ),
        run_config=ray.train.RunConfig(
            name=t.run_name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.keep_best, checkpoint_score_attribute="checkpoint_score", checkpoint_score_order="min"
            ),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our own progress lines are enough
            callbacks=list(callbacks),
        ),
        datasets=datasets,
    )
    return trainer, run_dir, local_dir


def train(cfg: RunConfig, verbose: bool = True) -> TrainOutcome:
    manifest = prepare(cfg)
    t = cfg.train
    trainer, run_dir, local_dir = build_trainer(cfg, manifest, verbose=verbose)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise TrainingFailed(f"training run {t.run_name} failed: {e}") from None

    metrics = dict(result.metrics or {})
    outcome = TrainOutcome(
        run_dir=run_dir,
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
        metrics=metrics,
        wandb_dir=_find_wandb_dir(local_dir) if t.wandb_mode != "disabled" else None,
        passed=None,
    )
    if t.test_mode and metrics:
        mse, mae, base = metrics["overfit/mse_loss"], metrics["overfit/mae_loss"], metrics["overfit/copy_last_mse"]
        outcome.passed = mse < OVERFIT_MSE and mae < OVERFIT_MAE and mse < OVERFIT_BASELINE_RATIO * base
    return outcome


class TrainingFailed(RuntimeError):
    pass


def _find_wandb_dir(local_dir: str) -> str | None:
    """The newest wandb run folder (`run-*` online, `offline-run-*` offline) under the run directory."""
    runs = list(Path(local_dir, "wandb").glob("*run-*"))
    return str(max(runs, key=os.path.getmtime)) if runs else None


def print_outcome(cfg: RunConfig, outcome: TrainOutcome, out=None) -> None:
    out = out or sys.stdout  # looked up at call time, so redirection (and pytest's capture) applies
    m = outcome.metrics
    print("", file=out)
    print(f"run directory : {outcome.run_dir}", file=out)
    print(f"checkpoint    : {outcome.checkpoint_path}", file=out)
    print(f"metrics       : {storage.join(outcome.run_dir, 'metrics.jsonl')}", file=out)
    if outcome.wandb_dir:
        hint = f"  (sync later with: wandb sync {outcome.wandb_dir})" if cfg.train.wandb_mode == "offline" else ""
        print(f"wandb run     : {outcome.wandb_dir}{hint}", file=out)
    for k in ("train/loss", "train/mse_loss", "val/loss", "val/mse_loss", "val/mae_loss", "val/codebook_usage"):
        if k in m:
            print(f"{k:<14}: {m[k]:.4f}", file=out)
    if outcome.passed is not None:
        mse, mae, base = m["overfit/mse_loss"], m["overfit/mae_loss"], m["overfit/copy_last_mse"]
        verdict = "PASS" if outcome.passed else "FAIL"
        print(f"overfit test  : MSE {mse:.5f} (< {OVERFIT_MSE}, and < {OVERFIT_BASELINE_RATIO} x copy-last {base:.5f}), "
              f"MAE {mae:.5f} (< {OVERFIT_MAE}) -> {verdict}", file=out)
