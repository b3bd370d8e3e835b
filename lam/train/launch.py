"""The driver side of training: start or join Ray, build the datasets, run a TorchTrainer.

    from lam.config import RunConfig
    from lam.train.launch import train
    cfg = RunConfig(); cfg.data.data_dir = "demo_data"; cfg.train.num_workers = 2
    result = train(cfg)

Without `RAY_ADDRESS` a local Ray is started (bound to 127.0.0.1); with it, the
same code runs on that cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2.api.config import LoggingConfig

from lam.config import RunConfig, dump_yaml
from lam.data.manifest import load_manifest
from lam.errors import UserError
from lam.runtime import storage
from lam.runtime.cluster import cpus_needed, init_ray
from lam.runtime.console import route_console
from lam.runtime.run_lock import run_lock
from lam.runtime.run_log import resolve_wandb_mode
from lam.train.ingest import plan_ingest
from lam.train.ledger import RunLedger
from lam.train.health import SkippedSteps
from lam.train.labels import label_fraction_note, resolve_label_classes
from lam.train.loop import train_loop_per_worker
from lam.train.resume import remove_orphan_checkpoints

OVERFIT_MSE, OVERFIT_MAE = 0.01, 0.05  # the spec's overfit success criterion
# ...and the model must have learned something: MSE at most 0.9x copying the last frame
# (on smooth data copy-last alone can be under 0.01, and an untrained model equals it).
OVERFIT_BASELINE_RATIO = 0.9


@dataclass
class TrainOutcome:
    run_dir: str
    checkpoint_path: str | None
    metrics: dict
    wandb_dir: str | None
    passed: bool | None  # test mode only
    stopped: bool = False  # stopped on SIGTERM after a step checkpoint; the same command resumes


def prepare(cfg: RunConfig):
    """Start-up checks that would otherwise fail hours in: config, manifest, every listed file."""
    cfg.validate()
    if cfg.train.batch_size % cfg.train.num_workers:
        raise UserError(f"batch_size {cfg.train.batch_size} must be a multiple of num_workers {cfg.train.num_workers} (it is split evenly across workers)")
    if cfg.train.use_gpu and not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--use_gpu was given but this machine has no CUDA GPU (and RAY_ADDRESS names no cluster)")
    # Workers and read tasks run in their own folders: a path relative to this one would not be found there.
    cfg.data.data_dir = os.path.abspath(cfg.data.data_dir)
    if cfg.data.manifest_path:
        cfg.data.manifest_path = os.path.abspath(cfg.data.manifest_path)
    manifest = load_manifest(cfg.data.manifest, cfg.data.data_dir)
    check_checkpoint_metric(cfg, manifest)
    cfg.resolve_run_name()
    cfg.train.wandb_mode = resolve_wandb_mode(cfg.train.wandb_mode)
    return manifest


def check_checkpoint_metric(cfg: RunConfig, manifest) -> None:
    """The metric that ranks checkpoints must exist in every saved epoch: a val metric needs a val
    split (val/loss falls back to train/loss), and a score against true actions needs them in
    every val file."""
    metric = cfg.train.checkpoint_metric
    if not metric.startswith("val/") or metric == "val/loss" or cfg.train.test_mode:
        return
    val = manifest.split_files("val")
    if not val:
        raise UserError(f"checkpoint_metric {metric} needs a val split; {manifest.path or 'the manifest'} has none")
    if metric in ("val/nmi", "val/code_map_accuracy"):
        missing = [rel for rel in val if not manifest.files.get(rel, {}).get("has_actions", True)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"checkpoint_metric {metric} scores the val files against their true actions; {missing[0]}{more} has none")


def run_dirs(cfg: RunConfig) -> tuple[str, str, str]:
    """(storage path, run directory, local directory) of a run: the run directory may be a URI;
    the local one holds what must be a local file (the wandb run, ray.log)."""
    storage_path = storage.resolve_storage_path(cfg.train.storage_path)
    run_dir = storage.join(storage_path, cfg.train.run_name)
    local_dir = run_dir if not storage.is_uri(run_dir) else os.path.abspath(os.path.join("runs", cfg.train.run_name))
    return storage_path, run_dir, local_dir


def build_trainer(cfg: RunConfig, manifest, callbacks=(), verbose: bool = True,
                  read_cpus: float | None = None) -> tuple[TorchTrainer, str, str]:
    """The TorchTrainer for one run, and its run directory (local path or URI) and local directory.

    Writes the run's config.yaml first. `callbacks` are Ray Train callbacks (a Tune sweep
    passes the one that forwards each report to Tune, and caps its reads with `read_cpus`,
    see `plan_ingest`).

    Each worker reads its own share of the data (lam/train/ingest.py), from the plan this
    builds. The read tasks report the windows they could not read to the run's ledger
    (`RunLedger`), which the loop reads at the end of each epoch; the driver asks the run to
    stop through it. The ledger lives as long as this process holds the trainer.
    """
    t = cfg.train
    storage_path, run_dir, local_dir = run_dirs(cfg)
    labelled = resolve_label_classes(cfg, manifest)  # the opt-in label head: its transitions, its classes from the data
    storage.write_text(storage.join(run_dir, "config.yaml"), dump_yaml(cfg))

    init_ray(min_cpus=cpus_needed(cfg))
    ledger = RunLedger.remote()
    plan, sizes = plan_ingest(cfg, manifest, read_cpus if read_cpus is not None else cpus_beside_workers(cfg))
    if verbose:
        print(f"[lam] run {t.run_name}: outputs in {run_dir}", flush=True)
        if labelled:
            print(label_fraction_note(cfg, labelled, manifest), flush=True)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "run_dir": run_dir, "local_dir": local_dir, "sizes": sizes,
                           "ledger": ledger, "ingest": plan},
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
    )
    return trainer, run_dir, local_dir


def cpus_beside_workers(cfg: RunConfig) -> float:
    """The CPUs the connected cluster has now beside a run's training workers (at least one): a
    plain run's reads may use them all."""
    return max(1.0, ray.cluster_resources().get("CPU", 0) - cfg.train.num_workers * cfg.train.cpus_per_worker)


def train(cfg: RunConfig, verbose: bool = True, ray_logs: bool = False) -> TrainOutcome:
    """Run one training job. `ray_logs`: Ray's own log lines on the console too (they always go
    to the run's ray.log)."""
    manifest = prepare(cfg)
    with run_lock(run_dirs(cfg)[1]):  # one process per run directory: no interleaved writes
        return _fit(cfg, manifest, verbose, ray_logs)


def _fit(cfg: RunConfig, manifest, verbose: bool, ray_logs: bool) -> TrainOutcome:
    t = cfg.train
    route_console(Path(run_dirs(cfg)[2]) / "ray.log", verbose=ray_logs)
    remove_orphan_checkpoints(run_dirs(cfg)[1])  # before Ray reads the run's checkpoints
    trainer, run_dir, local_dir = build_trainer(cfg, manifest, verbose=verbose)
    try:
        with stop_on_sigterm(trainer.train_loop_config["ledger"]) as stop:
            result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        log = Path(local_dir) / "error.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"{e}\n")
        raise TrainingFailed(f"training run {t.run_name} failed: {failure_summary(e)} (the full error: {log}; "
                             f"Ray's log: {Path(local_dir) / 'ray.log'})") from None

    metrics = dict(result.metrics or {})
    outcome = TrainOutcome(
        run_dir=run_dir,
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
        metrics=metrics,
        wandb_dir=_find_wandb_dir(local_dir) if t.wandb_mode != "disabled" else None,
        passed=None,
        stopped=stop.is_set() and "epochs_done" in metrics,  # the last report a step checkpoint's, not the last epoch's
    )
    if t.test_mode and metrics:
        mse, mae, base = metrics["overfit/mse_loss"], metrics["overfit/mae_loss"], metrics["overfit/copy_last_mse"]
        outcome.passed = mse < OVERFIT_MSE and mae < OVERFIT_MAE and mse < OVERFIT_BASELINE_RATIO * base
    return outcome


class TrainingFailed(RuntimeError):
    pass


@contextlib.contextmanager
def stop_on_sigterm(ledger):
    """While training: SIGTERM (a spot node's termination notice, `kill`, a scheduler's stop)
    asks the workers, through the run's ledger, to write a step checkpoint and stop; a second
    SIGTERM ends the process as usual. Yields the event that says whether it came. The signal
    handler only sets the event: the ask goes out from a thread, as a Ray call made inside a
    handler could interrupt Ray's own code in the main thread."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return

    def ask() -> None:
        while not done.is_set():
            if stop.wait(timeout=0.2):
                print(f"[lam] SIGTERM: the run writes a step checkpoint within {SkippedSteps.CHECK_EVERY} steps or at the epoch's "
                      "end, and stops (SIGTERM again stops it at once)", flush=True)
                ledger.request_stop.remote()
                return

    def on_sigterm(signum, frame) -> None:
        signal.signal(signal.SIGTERM, previous)
        stop.set()

    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    asker = threading.Thread(target=ask, name="lam-sigterm", daemon=True)
    asker.start()
    try:
        yield stop
    finally:
        done.set()
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)


EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*): (.+)$")  # "pkg.mod.SomeError: message"


def failure_summary(error: Exception) -> str:
    """One line for a failed run: the innermost exception of the first failing worker (the last
    "Type: message" line of its traceback, whatever Ray adds after it), as "Type: message"
    without the module path; for our own errors the message alone."""
    failures = getattr(error, "worker_failures", None) or {}
    text = str(failures[min(failures)]) if failures else str(error)
    for line in reversed(text.strip().splitlines()):
        match = EXCEPTION_LINE.match(line.strip())
        if match:
            kind, message = match.groups()
            return message if kind in ("UserError", "DataError", "NonFiniteLoss", "StorageFull", "CorruptCheckpoint") else f"{kind}: {message}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


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
