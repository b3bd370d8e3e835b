"""Command line: `python -m bench.quality.realplay --help`."""

from __future__ import annotations

import argparse
import sys
import time

from bench.quality.realplay.base import ENVIRONMENTS, MissingDependency, make_env
from bench.quality.realplay.generate import HOLD_PROB, generate

EXAMPLES = """examples:
  python -m bench.quality.realplay                                    # every environment, 16 episodes of 64 chunks
  python -m bench.quality.realplay --env crafter --episodes 4 --chunks 16 --out /tmp/rp
  python -m bench.quality.realplay --env minigrid,vizdoom --seed 1 --out realplay_seed1
  lam validate realplay_data/crafter                          # then train and evaluate on a folder

Each environment gets OUT/ENV/episode_0000.h5, ... and OUT/ENV/manifest.json (split 0.75/0.125/0.125).
Install: pip install -e '.[bench]'; miniwob also needs Debian's chromium and chromium-driver, desktop
Debian's xvfb, openbox, mousepad, pcmanfm, gnumeric and xterm.
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (and exit code 2), like the product's errors."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(
        prog="python -m bench.quality.realplay",
        description="Record random play in real environments, encode frames as VVAE-shaped latents "
        "([N, 16, 2, 64, 64] float16) and write one H5 file per episode with the true actions.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--env", default="all", metavar="NAME", help=f"environment, comma-separated list, or 'all' ({', '.join(ENVIRONMENTS)}); default all")
    p.add_argument("--episodes", type=int, default=16, metavar="N", help="episodes (files) per environment; default 16")
    p.add_argument("--chunks", type=int, default=64, metavar="C", help="chunks per episode (2 latent frames, 8 video frames each); default 64")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="dataset seed: the same seed gives the same files; default 0")
    p.add_argument("--out", default="realplay_data", metavar="DIR", help="output folder; each environment writes OUT/ENV/; default realplay_data")
    p.add_argument("--hold_prob", type=float, default=None, metavar="P",
                   help=f"probability of keeping the previous action each latent frame; default: the environment's own "
                   f"({HOLD_PROB} for most; crafter 0)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def env_names(spec: str) -> list[str]:
    """'all' or 'a,b' -> names; ValueError naming the valid ones for an unknown name."""
    if spec.strip() == "all":
        return list(ENVIRONMENTS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENVIRONMENTS]
    if unknown or not names:
        raise ValueError(f"unknown environment '{','.join(unknown) or spec}'; choose from: {', '.join(ENVIRONMENTS)}, or all")
    return names


def main(argv=None) -> int:
    args = parse_args(argv)
    prog = "python -m bench.quality.realplay"
    try:
        names = env_names(args.env)
        if args.episodes < 1 or args.chunks < 1:
            raise ValueError(f"--episodes and --chunks must be >= 1, got {args.episodes} and {args.chunks}")
        if args.hold_prob is not None and not 0.0 <= args.hold_prob <= 1.0:
            raise ValueError(f"--hold_prob must be in [0, 1], got {args.hold_prob}")
        for name in names:  # fail before any work when something is not installed
            make_env(name).close()
    except (ValueError, MissingDependency) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    log = None if args.quiet else (lambda line: print(line, flush=True))
    for name in names:
        start = time.perf_counter()
        try:
            generate(name, args.out, args.episodes, args.chunks, args.seed, hold_prob=args.hold_prob, log=log)
        except MissingDependency as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        if log:
            log(f"[realplay] {name}: {args.episodes} episodes in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
