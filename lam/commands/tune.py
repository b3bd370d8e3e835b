"""`lam tune`: hyperparameter sweeps with Ray Tune and ASHA."""

from __future__ import annotations

import argparse
import sys

from lam.commands.flags import add_config_flags, add_sweep_flags, config_from_args, recipes_help, sweep_from_args

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
    p = sub.add_parser(
        "tune",
        help="hyperparameter sweep: Ray Tune + ASHA, a distributed training run per trial",
        usage="lam tune [--search_space YAML] [--name NAME] [--SWEEP_FIELD VALUE ...] [--recipe NAME] [--config YAML] "
        "[--FIELD VALUE ...] [--verbose]",
        description="Sweep model and optimiser settings with Ray Tune. Every trial is a TorchTrainer run (DDP);\n"
        "ASHA stops the weak ones early. Prints a results table and writes the best config as YAML.",
        epilog=TUNE_EXAMPLES + recipes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_flags(p)
    add_config_flags(p)
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's own log lines on the console (always written to the sweep's ray.log)")
    p.set_defaults(func=run_tune)


def run_tune(args) -> int:
    from lam.tune.sweep import format_table, run_sweep

    settings = sweep_from_args(args)
    base = config_from_args(args)
    outcome = run_sweep(base, settings, ray_logs=args.verbose)
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
