"""The `lam` command: one entry point, a subcommand per job; the package holds every command's
argument handling, and only `python -m lam` (lam/__main__.py) imports it.

    lam synth demo_data --files 16 --chunks 64 --seed 0
    lam manifest demo_data --train_ratio 0.8 --val_ratio 0.1 --test_ratio 0.1 --seed 42
    lam validate demo_data
    lam train --data_dir demo_data --manifest_path demo_data/manifest.json --test_mode
    lam train --recipe demo --data_dir demo_data
    lam tune --data_dir demo_data --num_samples 8 --max_epochs 20
    lam demo

Errors the user can fix (a bad file, flag or manifest) print one line naming the
problem and exit with code 2, without a traceback. The command modules import torch,
Ray and wandb only when a command runs, so `lam --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from lam.commands import data as data_cli
from lam.commands import eval as eval_cli
from lam.commands import train as train_cli
from lam.commands import tune as tune_cli
from lam.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lam",
        description="Train, evaluate and export latent action models on video-VAE latents, on Ray.",
        epilog="Run `lam COMMAND --help` for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (data_cli, train_cli, tune_cli, eval_cli):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"lam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
