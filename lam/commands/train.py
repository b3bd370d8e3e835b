"""`lam train` and `lam demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lam.commands.flags import add_config_flags, config_from_args, recipes_help
from lam.recipes import recipe_config

TRAIN_EXAMPLES = """examples:
  # the spec's overfit sanity check (exit 0 on PASS, 1 on FAIL)
  lam train --data_dir D --manifest_path D/manifest.json --test_mode --num_epochs 1000 --batch_size 4 --learning_rate 1e-3

  # full training, 2 DDP workers on CPU (or --use_gpu on a GPU cluster)
  lam train --data_dir D --manifest_path D/manifest.json --batch_size 32 --sequence_length 8 \\
            --num_epochs 100 --learning_rate 1e-4 --wandb_project vvae-lam --num_workers 2

  # what `lam demo` trains, on your data
  lam train --recipe real --data_dir D

  # the small FSQ recipe with the spec's VQ instead
  lam train --recipe demo --data_dir D --quantizer vq --num_embeddings 12

  # a YAML config plus overrides; re-running with the same --run_name resumes it
  lam train --config run.yaml --run_name my-run --storage_path ./runs --num_epochs 200

  # a long run that restarts dead workers twice and stops at the first unreadable window
  lam train --config run.yaml --run_name my-run --max_failures 2 --max_bad_windows fail

Without RAY_ADDRESS a local Ray is started on 127.0.0.1; with it, the run goes to that cluster.
Outputs: STORAGE_PATH/RUN_NAME/{config.yaml, metrics.jsonl, checkpoint_epoch*/, wandb/, ray.log}.
Killed, out of disk, a damaged checkpoint, bad windows: docs/faults.md says what a run does.

"""

DEMO_EXAMPLES = """examples:
  lam demo                       # synthesise ./demo_data, train 2 workers for a few minutes, evaluate
  lam demo --num_epochs 4 --workdir /tmp/lam-demo
"""

DEMO_DATA = {"files": 48, "chunks": 16, "seed": 0}  # 48 videos of 32 latent frames: 36 train, 6 val, 6 test
DEMO_RECIPE = "real"  # the recipe `lam demo` trains: the best measured one (docs/RESULTS.md)
# Fewer than the recipe's 10: on the demo's data the test actions are as clean after 6 epochs
# (docs/RESULTS.md), and the demo is meant to finish within minutes on a laptop's CPU.
DEMO_EPOCHS = 6


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own log lines on the console (always written to RUN_DIR/ray.log)")


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a latent action model with Ray Train (DDP)",
        usage="lam train [--recipe NAME] [--config YAML] [--FIELD VALUE ...] [--verbose]",
        description="Train a latent action model: Ray Data feeds a Ray Train TorchTrainer (DDP on CPU or GPU).",
        epilog=TRAIN_EXAMPLES + recipes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(p)
    add_verbose_flag(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "demo",
        help="the embedded default: synthetic data, 2-worker training, evaluation",
        description="Synthesise a small dataset with ground-truth actions, write its manifest, train the `real`\n"
        "recipe with 2 DDP workers on the local Ray for a few minutes, evaluate it on the test split, and\n"
        "print where the checkpoint, metrics and wandb run (offline unless an API key is configured) are.",
        epilog=DEMO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", default=".", help="where demo_data/ and runs/ go (default: the current folder)")
    p.add_argument("--num_workers", "--num-workers", type=int, default=2, help="DDP workers (default: 2)")
    p.add_argument("--num_epochs", "--num-epochs", type=int, default=DEMO_EPOCHS, help=f"epochs (default: {DEMO_EPOCHS})")
    p.add_argument("--wandb_mode", "--wandb-mode", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="wandb mode (default: auto, online when an API key is configured)")
    add_verbose_flag(p)
    p.set_defaults(func=run_demo)


def run_train(args) -> int:
    from lam.train.launch import TrainingFailed, print_outcome, train

    cfg = config_from_args(args)
    try:
        outcome = train(cfg, ray_logs=args.verbose)
    except TrainingFailed as e:
        print(f"lam train: error: {e}", file=sys.stderr)
        return 1
    print_outcome(cfg, outcome)
    if outcome.stopped:
        # 128 + SIGTERM, as a process ended by the signal: not a finished run to a job scheduler
        print(f"[lam] stopped on SIGTERM at step {outcome.metrics.get('step')}; the same command resumes the run there", flush=True)
        return 143
    if outcome.passed is not None:
        return 0 if outcome.passed else 1
    return 0


def run_demo(args) -> int:
    from lam.data.manifest import create_manifest, write_manifest
    from lam.data.synth import write_synthetic_dataset
    from lam.eval.evaluate import evaluate_checkpoint, print_report
    from lam.train.launch import print_outcome, train

    workdir = Path(args.workdir).resolve()
    cfg = recipe_config(DEMO_RECIPE)
    cfg.data.data_dir = str(workdir / "demo_data")
    cfg.train.storage_path = str(workdir / "runs")
    cfg.train.num_workers = args.num_workers
    cfg.train.num_epochs = args.num_epochs
    cfg.train.wandb_mode = args.wandb_mode
    cfg.validate()  # a bad flag fails here, before any data is written
    data_dir = Path(cfg.data.data_dir)

    print(f"[demo] 1/3 synthesising data in {data_dir}", flush=True)
    write_synthetic_dataset(data_dir, **DEMO_DATA, progress=True)
    write_manifest(create_manifest(data_dir, 0.75, 0.125, 0.125, seed=42), data_dir / "manifest.json")

    print(f"[demo] 2/3 training the {DEMO_RECIPE} recipe with {cfg.train.num_workers} workers", flush=True)
    outcome = train(cfg, ray_logs=args.verbose)
    print_outcome(cfg, outcome)
    print("[demo] 3/3 evaluating on the test split", flush=True)
    print_report(evaluate_checkpoint(outcome.checkpoint_path, cfg.data.data_dir, cfg.data.manifest, split="test"))
    return 0
