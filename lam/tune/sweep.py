"""`lam tune`: a Ray Tune sweep in which every trial is a full distributed training run.

    from lam.config import RunConfig, SweepConfig
    from lam.tune.sweep import run_sweep
    outcome = run_sweep(base_cfg, SweepConfig(search_space="space.yaml", num_samples=8, max_epochs=20))

The Train V2 way: Tune runs `run_trial` once per sampled config; `run_trial` builds the
same TorchTrainer as `lam train` (its own workers, placement group and Ray Data
ingest) with a callback that forwards every epoch's report to Tune, where ASHA
compares trials at `grace_period * reduction_factor**k` epochs and stops the worse
ones. The trial function itself needs no CPU: the trainer's workers hold them.

Layout under STORAGE_PATH/NAME/: Tune's experiment state and per-trial folders,
`trials/trial_<id>/` (each trial's training run: config, metrics, checkpoints),
`results.json` and `best_config.yaml`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from lam.config import ACTION_CHECK_METRICS, RunConfig, SweepConfig, apply_overrides, dump_yaml
from lam.data.manifest import load_manifest
from lam.errors import UserError
from lam.runtime import storage
from lam.runtime.cluster import cpus_needed, init_ray
from lam.runtime.console import route_console
from lam.train.launch import build_trainer, prepare
from lam.tune.space import check_against, count_grid, describe, load_search_space, to_param_space

DATA_CPUS_PER_TRIAL = 1  # room for each trial's Ray Data read tasks beside its training workers
TRIAL_DRIVER_MEMORY = 256 * 1024**2  # bytes; the trial function's own process


@dataclass
class TrialRow:
    trial_id: str
    params: dict
    epochs: int
    best: float | None  # the best value of the metric over the trial's epochs
    status: str  # completed | stopped early | error | unfinished
    run_dir: str
    checkpoints: list[tuple[float, str]] = field(default_factory=list)  # (metric, path) per saved epoch


@dataclass
class SweepOutcome:
    sweep_dir: str
    rows: list[TrialRow]
    best: TrialRow | None
    best_config_path: str | None
    best_checkpoint: str | None
    finished: bool  # False when interrupted: run again with --resume


def derive_max_concurrent(cfg: RunConfig, resources: dict) -> int:
    """How many trials the cluster holds at once: each needs its workers' CPUs (and GPUs) plus
    a CPU for data reading. On an autoscaling cluster this sees only the nodes up now."""
    t = cfg.train
    n = int(resources.get("CPU", 0) // cpus_needed(cfg, DATA_CPUS_PER_TRIAL))
    if t.use_gpu:
        n = min(n, int(resources.get("GPU", 0) // t.num_workers))
    return max(1, n)


def trial_config(base: dict, params: dict, sweep_dir: str, sweep_name: str, trial_id: str) -> RunConfig:
    """One trial's full config: the base, the sampled params, and its own run name and folder."""
    cfg = RunConfig.from_dict(base)
    apply_overrides(cfg, params, source="search space", unused="drop")  # the drawn component's settings only
    cfg.train.run_name = f"trial_{trial_id}"
    cfg.train.storage_path = storage.join(sweep_dir, "trials")
    cfg.train.wandb_group = cfg.train.wandb_group or sweep_name  # all trials in one wandb group
    return cfg


def run_trial(params: dict, base: dict, sweep_dir: str, sweep_name: str) -> None:
    """Tune's trainable: one distributed training run, its epoch reports forwarded to Tune.

    A trial that Tune restores (after an interrupted sweep) gets the same trial id, so the
    same run name, and its TorchTrainer resumes from that run's latest checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params, sweep_dir, sweep_name, trial_id)
    manifest = load_manifest(cfg.data.manifest, cfg.data.data_dir)
    # Each trial's reads stay within the CPUs set aside for them (derive_max_concurrent), so
    # trials running side by side do not starve each other's reads.
    trainer, _, _ = build_trainer(cfg, manifest, callbacks=[TuneReportCallback()], verbose=False, read_cpus=DATA_CPUS_PER_TRIAL)
    trainer.fit()


def metric_every_epoch(base: RunConfig, metric: str) -> str | None:
    """Make the trials report `metric` every epoch, which ASHA compares at its rungs: a metric of
    the action check turns that check on every epoch (eval_every 1). Returns a line saying so,
    or None when nothing changed."""
    if metric not in ACTION_CHECK_METRICS or base.train.eval_every == 1:
        return None
    was, base.train.eval_every = base.train.eval_every, 1
    return f"{metric} comes from the action check: every trial runs it every epoch (eval_every 1, not {was})"


def run_sweep(base: RunConfig, s: SweepConfig, verbose: bool = True, ray_logs: bool = False) -> SweepOutcome:
    """Run the sweep `s` over `base`. `ray_logs`: Ray's own log lines on the console too (they
    always go to the sweep's ray.log)."""
    s.validate()
    if base.train.save_every_steps:
        # Every report of a trial is a result to Tune: step checkpoints would be rungs to ASHA.
        raise UserError(f"save_every_steps ({base.train.save_every_steps}) is for lam train: a sweep's trials report and "
                        "checkpoint once per epoch, the unit ASHA's rungs count in")
    say = print if verbose else (lambda *a, **k: None)
    space_source = s.search_space or "default search space"
    raw_space = load_search_space(s.search_space)
    base.train.num_epochs = s.max_epochs
    note = metric_every_epoch(base, s.metric)
    if note:
        say(f"[tune] {note}", flush=True)
    prepare(base)  # config, manifest and every listed file, before any trial starts
    check_against(base, raw_space, space_source)
    base.train.run_name = ""  # prepare() named the run; each trial gets its own name instead
    # Trials run in other processes (and folders, maybe nodes): give them absolute paths.
    base.data.data_dir = str(Path(base.data.data_dir).resolve())
    if base.data.manifest_path:
        base.data.manifest_path = str(Path(base.data.manifest_path).resolve())
    base.train.storage_path = storage.resolve_storage_path(base.train.storage_path)

    name = s.name or "tune-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    storage_root = storage.resolve_storage_path(base.train.storage_path)
    sweep_dir = storage.join(storage_root, name)
    # A local Ray gets logical CPUs for the trials asked to run at once (on a cluster the
    # autoscaler adds nodes instead); without enough, Ray Data's reads would wait forever.
    local_dir = sweep_dir if not storage.is_uri(sweep_dir) else os.path.abspath(os.path.join("runs", name))
    route_console(Path(local_dir) / "ray.log", verbose=ray_logs)
    init_ray(min_cpus=cpus_needed(base, DATA_CPUS_PER_TRIAL) * max(1, s.max_concurrent_trials))

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base.to_dict(), sweep_dir=sweep_dir, sweep_name=name),
        # The trial function only waits on its trainer, whose workers hold the CPUs. Tune needs
        # a non-empty request; memory, not a CPU slice, which would leave 0.99-CPU holes that
        # no 1-CPU Ray Data task fits in.
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    exists = tune.Tuner.can_restore(sweep_dir)
    if s.resume:
        if not exists:
            raise UserError(f"no sweep to resume at {sweep_dir} (check --name and --storage_path)")
        say(f"[tune] resuming sweep {name} from {sweep_dir}", flush=True)
        # Finished trials are kept as they are; unfinished and errored ones continue.
        tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if exists:
            raise UserError(f"sweep {name} already exists at {sweep_dir}: pass --resume to continue it, or another --name")
        fits = derive_max_concurrent(base, ray.cluster_resources())
        max_concurrent = s.max_concurrent_trials or fits
        if max_concurrent > fits:
            say(f"[tune] note: the cluster holds {fits} trial(s) at once now; the rest wait for the autoscaler", flush=True)
        trials = count_grid(raw_space) * s.num_samples
        say(f"[tune] sweep {name}: {trials} trials, up to {max_concurrent} at a time, {base.train.num_workers} worker(s) each, "
            f"ASHA on {s.metric} ({s.mode}) over {s.max_epochs} epochs (grace {s.grace_period}, reduction {s.reduction_factor})\n"
            f"[tune] search space ({space_source}):\n{describe(raw_space)}\n[tune] outputs in {sweep_dir}", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(raw_space),
            tune_config=tune.TuneConfig(
                metric=s.metric,
                mode=s.mode,
                scheduler=ASHAScheduler(
                    time_attr="epoch",  # the loop's own epoch count, which survives a resumed trial
                    max_t=s.max_epochs, grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                ),
                search_alg=BasicVariantGenerator(max_concurrent=max_concurrent, random_state=s.search_seed),
                num_samples=s.num_samples,
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage_root, verbose=1),
        )

    tuner.fit()
    # Read the results back as saved: after Ctrl-C Tune stops the running trials in memory
    # (they look terminated) but saves them as running, which is what a resume continues.
    grid = tune.Tuner.restore(sweep_dir, trainable=trainable).get_results()
    rows = collect_rows(grid, sweep_dir, s)
    expected = count_grid(raw_space) * s.num_samples
    finished = len(rows) == expected and all(r.status != "unfinished" for r in rows)
    outcome = SweepOutcome(sweep_dir, rows, None, None, None, finished)
    scored = [r for r in rows if r.best is not None and r.status != "error"]
    if scored:
        sign = 1 if s.mode == "min" else -1
        outcome.best = min(scored, key=lambda r: sign * r.best)
        outcome.best_checkpoint = best_checkpoint(outcome.best, s.mode)
        best_cfg = base.copy()
        apply_overrides(best_cfg, outcome.best.params, source="best trial")
        outcome.best_config_path = storage.join(sweep_dir, "best_config.yaml")
        storage.write_text(outcome.best_config_path, dump_yaml(best_cfg))
    storage.write_text(storage.join(sweep_dir, "results.json"), json.dumps(results_json(outcome, s), indent=2))
    return outcome


def collect_rows(grid, sweep_dir: str, s: SweepConfig) -> list[TrialRow]:
    # Tune's per-trial status (finished, stopped, pending) is only on its Trial objects.
    status_by_id = {t.trial_id: t.status for t in grid._experiment_analysis.trials}
    rows = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[-1]
        df = result.metrics_dataframe
        history = [] if df is None or s.metric not in df else df.to_dict("records")
        values = [h[s.metric] for h in history if _finite(h.get(s.metric))]
        epochs = int(max((h.get("epoch", 0) for h in history), default=0))
        best = (min(values) if s.mode == "min" else max(values)) if values else None
        checkpoints = [(h[s.metric], h["checkpoint_path"]) for h in history
                       if isinstance(h.get("checkpoint_path"), str) and _finite(h.get(s.metric))]
        if result.error is not None:
            status = "error"
        elif status_by_id.get(trial_id) != "TERMINATED":
            status = "unfinished"
        else:
            status = "completed" if epochs >= s.max_epochs else "stopped early"
        params = dict(result.config or {})
        rows.append(TrialRow(trial_id, params, epochs, best, status, storage.join(sweep_dir, "trials", f"trial_{trial_id}"), checkpoints))
    return sorted(rows, key=lambda r: r.trial_id)


def best_checkpoint(row: TrialRow, mode: str) -> str | None:
    """The trial's best-scoring checkpoint that still exists (a run keeps only its best few)."""
    sign = 1 if mode == "min" else -1
    for _, path in sorted(row.checkpoints, key=lambda c: sign * c[0]):
        if storage.exists(path):
            return path
    return None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def results_json(outcome: SweepOutcome, s: SweepConfig) -> dict:
    return {
        "metric": s.metric,
        "mode": s.mode,
        "max_epochs": s.max_epochs,
        "finished": outcome.finished,
        "best_trial": outcome.best.trial_id if outcome.best else None,
        "best_config": outcome.best_config_path,
        "best_checkpoint": outcome.best_checkpoint,
        "trials": [
            {"trial_id": r.trial_id, "params": r.params, "epochs": r.epochs, "best": r.best, "status": r.status, "run_dir": r.run_dir}
            for r in outcome.rows
        ],
    }


def format_table(outcome: SweepOutcome, metric: str) -> str:
    """The results table: one row per trial, its params, epochs run, best metric, status."""
    keys = sorted({k for r in outcome.rows for k in r.params})
    header = ["trial", *keys, "epochs", f"best {metric}", "status"]
    body = []
    for r in outcome.rows:
        mark = " *" if outcome.best is r else ""
        body.append([r.trial_id + mark, *(_fmt(r.params.get(k)) for k in keys), str(r.epochs),
                     "-" if r.best is None else f"{r.best:.5g}", r.status])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)
