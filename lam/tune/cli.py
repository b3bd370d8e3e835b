"""`lam tune`: hyperparameter sweeps with Ray Tune and ASHA."""

from __future__ import annotations

import argparse
import sys

from lam.config import add_config_flags, config_from_args

TUNE_EXAMPLES = """examples:
  # 8 random draws of the default space (lam/tune/default_space.yaml), 20 epochs max each
  lam tune --data_dir D --manifest_path D/manifest.json --num_samples 8 --max_epochs 20 --name sweep1

  # your own space and a base config; 2 DDP workers per trial, 3 trials at a time
  lam tune --config base.yaml --search_space space.yaml --num_workers 2 --max_concurrent_trials 3

  # continue an interrupted sweep (finished trials are kept, unfinished ones continue)
  lam tune --config base.yaml --name sweep1 --resume

  # then train the winner for longer
  lam train --config runs/sweep1/best_config.yaml --num_epochs 100

Search space YAML (keys are the flat config names of `lam train --help`):
  embed_dim: {grid: [128, 256]}            learning_rate: {loguniform: [1.0e-4, 3.0e-3]}
  num_embeddings: {choice: [8, 12, 16]}    commitment_weight: {uniform: [0.1, 0.5]}
  encoder_depth: {randint: [2, 6]}         decoder_depth: 3

Each trial is a full `lam train` run (its flags set the base config) reporting every epoch;
ASHA stops the trials that are behind at epochs grace*rf^k. Outputs in STORAGE_PATH/NAME/:
results.json, best_config.yaml, trials/trial_<id>/ (checkpoints, metrics.jsonl).
Without RAY_ADDRESS a local Ray is started on 127.0.0.1; with it, the sweep runs on that cluster.
"""


def register(sub) -> None:
    from lam.cli import add_flag
    from lam.tune.sweep import SweepSettings

    p = sub.add_parser(
        "tune",
        help="hyperparameter sweep: Ray Tune + ASHA, a distributed training run per trial",
        description="Sweep model and optimiser settings with Ray Tune. Every trial is a TorchTrainer run (DDP);\n"
        "ASHA stops the weak ones early. Prints a results table and writes the best config as YAML.",
        epilog=TUNE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = SweepSettings()
    g = p.add_argument_group("sweep options")
    add_flag(g, "search_space", default="", metavar="YAML", help="search space file (default: lam/tune/default_space.yaml)")
    add_flag(g, "name", default="", help="sweep name, a folder under --storage_path (default: tune-DATE-TIME)")
    add_flag(g, "num_samples", type=int, default=defaults.num_samples, help=f"samples of the space (default: {defaults.num_samples})")
    add_flag(g, "max_epochs", type=int, default=defaults.max_epochs, help=f"epochs per trial, ASHA's max_t (default: {defaults.max_epochs})")
    add_flag(g, "grace_period", type=int, default=defaults.grace_period, help=f"epochs before a trial may be stopped (default: {defaults.grace_period})")
    add_flag(g, "reduction_factor", type=int, default=defaults.reduction_factor, help=f"ASHA reduction factor (default: {defaults.reduction_factor})")
    add_flag(g, "metric", default=defaults.metric, help=f"metric ASHA compares (default: {defaults.metric})")
    add_flag(g, "mode", default=defaults.mode, choices=["min", "max"], help=f"(default: {defaults.mode})")
    add_flag(g, "max_concurrent_trials", type=int, default=0, help="trials at once (default: what the cluster's CPUs/GPUs hold)")
    add_flag(g, "search_seed", type=int, default=defaults.seed, help=f"seed of the random draws (default: {defaults.seed})")
    add_flag(g, "resume", action="store_true", help="continue the sweep --name")
    add_config_flags(p)
    p.set_defaults(func=run_tune)


def run_tune(args) -> int:
    from lam.tune.sweep import SweepSettings, format_table, run_sweep

    settings = SweepSettings(
        search_space=args.search_space, name=args.name, num_samples=args.num_samples, max_epochs=args.max_epochs,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor, metric=args.metric, mode=args.mode,
        max_concurrent_trials=args.max_concurrent_trials, seed=args.search_seed, resume=args.resume,
    )
    base = config_from_args(args)
    outcome = run_sweep(base, settings)
    print("")
    print(format_table(outcome, settings.metric))
    print("")
    print(f"results        : {outcome.sweep_dir}/results.json")
    if outcome.best is not None:
        print(f"best trial     : {outcome.best.trial_id} ({settings.metric} {outcome.best.best:.5g})")
        print(f"best config    : {outcome.best_config_path}   (lam train --config {outcome.best_config_path})")
        print(f"best checkpoint: {outcome.best_checkpoint}")
    if not outcome.finished:
        name = outcome.sweep_dir.rstrip("/").rsplit("/", 1)[-1]
        print(f"lam tune: the sweep was interrupted; continue it with the same flags plus --name {name} --resume", file=sys.stderr)
        return 130
    if outcome.best is None:
        print("lam tune: no trial reported the metric; see the trials' logs above", file=sys.stderr)
        return 1
    return 0
