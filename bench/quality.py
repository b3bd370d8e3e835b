"""Action quality on real rendered play and on the synthetic world: several seeds, a floor and a ceiling.

    python -m bench.quality --recipe demo --seeds 3
    python -m bench.quality --recipe spec --set embed_dim=128 encoder_depth=2 decoder_depth=2 --seeds 3
    python -m bench.quality --datasets synthetic --seeds 1 --minutes 1        # a quick look
    python -m bench.quality --recipe real --seeds 3 --epochs 4 --extend screen.json --out full.json   # seeds 1, 2 added
    python -m bench.quality --recipe real --seeds 3 --epochs 4 --datasets minigrid,crafter --extend a.json --extend b.json
                                                          # the runs of two reports in one, missing seeds run

For every dataset and seed it trains the recipe (`lam.train.launch.train`, as `lam train`
does), evaluates the final checkpoint on the test split (`lam.eval`, as `lam eval` does),
and puts the numbers between
  - the floor: majority-class chance, and the same model untrained (random weights of
    the same seed) through the same evaluation;
  - the ceiling: an inverse-dynamics model trained with the true actions on the same
    split (`bench/idm.py`).
The headline is the code -> action probe accuracy as a fraction of the gap between the
untrained model and the ceiling ("gap closed"); next to it NMI, controllability (delta-t
PSNR), next-frame MSE relative to copying the last frame, and the number of action ids
used. Every figure is a mean +- std over seeds. The true actions are only ever read by
the evaluation and the ceiling, never by training.

Datasets: `synthetic` (`lam synth`'s world) and the real-play environments of
`bench.realplay` (rendered episodes turned into VVAE-shaped latents; `pip install -e
'.[bench]'`). Data are generated once under --data_root and reused. Training time per run
is set by --minutes: the epochs are chosen from a timing of the recipe's training step on
this machine (the JSON records the epochs used), or fixed with --epochs.
Writes bench/quality-RECIPE.json (--out) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lam.config import RunConfig, apply_overrides
from lam.data.manifest import create_manifest, load_manifest, write_manifest
from lam.data.windows import build_window_index
from lam.errors import UserError
from lam.recipes import RECIPES, recipe_config

REPO = Path(__file__).resolve().parent.parent
SYNTHETIC = {"files": 64, "chunks": 32}  # 16 test files of 64 latent frames
REALPLAY = {"episodes": 24, "chunks": 64}  # 6 test episodes of 128 latent frames
# Test files are what the probes are fitted and scored on (half each, by file): a quarter of the
# files, so that both halves hold several files.
SPLIT = (0.625, 0.125, 0.25)


# ----------------------------------------------------------------------------- datasets


def realplay_envs() -> list[str]:
    from bench.realplay.base import ENVIRONMENTS

    return list(ENVIRONMENTS)


def ensure_dataset(name: str, root: Path, seed: int = 0) -> Path:
    """The dataset's folder with its manifest, generated on first use."""
    data_dir = root / name
    if (data_dir / "manifest.json").is_file():
        return data_dir
    print(f"[quality] generating dataset {name} in {data_dir}", flush=True)
    if name == "synthetic":
        from lam.data.synth import write_synthetic_dataset

        write_synthetic_dataset(data_dir, **SYNTHETIC, seed=seed)
    else:
        from bench.realplay.generate import generate

        generate(name, root, **REALPLAY, seed=seed)
    write_manifest(create_manifest(data_dir, *SPLIT, seed=42), data_dir / "manifest.json")
    return data_dir


# ----------------------------------------------------------------------------- one run


def run_config(recipe: str, overrides: dict, data_dir: Path, storage: Path, seed: int) -> RunConfig:
    cfg = recipe_config(recipe)
    apply_overrides(cfg, overrides, source="--set")
    cfg.data.data_dir, cfg.data.manifest_path = str(data_dir), ""
    t = cfg.train
    t.seed, t.storage_path, t.wandb_mode, t.log_every = seed, str(storage), "disabled", 0
    t.save_every = 10**6  # only the final checkpoint: the one that is evaluated
    return cfg


def seconds_per_step(cfg: RunConfig, steps: int = 3) -> float:
    """Forward + backward + AdamW of one training batch of the recipe's model, in this process."""
    from lam.model import LatentActionModel

    torch.manual_seed(0)
    model = LatentActionModel(cfg.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    m = cfg.model
    x = torch.randn(cfg.train.batch_size, cfg.data.sequence_length, m.in_channels, m.latent_size, m.latent_size)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        model(x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def epochs_for(cfg: RunConfig, minutes: float, step_s: float) -> int:
    """Epochs that fit in `minutes`, with room for start-up, validation and evaluation."""
    manifest = load_manifest(cfg.data.manifest, cfg.data.data_dir)
    windows = len(build_window_index(manifest, "train", cfg.data.sequence_length, cfg.data.train_stride))
    epoch_s = math.ceil(windows / cfg.train.batch_size) * step_s * 1.3 + 5
    return max(1, int(60 * minutes / epoch_s))


def scores(report: dict) -> dict:
    """The numbers compared across runs, from a `lam eval` report."""
    gt = report.get("ground_truth") or {}
    return {
        "probe_accuracy": gt.get("code_map_accuracy"),
        "probe_accuracy_sampling_std": gt.get("code_map_accuracy_std"),  # bootstrap over test files
        "frame_probe_accuracy": gt.get("best_frame_probe_accuracy"),  # the leakage control
        "nmi": gt.get("nmi"),
        "nmi_sampling_std": gt.get("nmi_std"),
        "chance": gt.get("chance_accuracy"),
        "delta_psnr": report["delta_psnr"],
        "mse_vs_copy_last": report["next_frame"]["mse"] / report["copy_last_baseline"]["mse"],
        "action_ids_used": report.get("action_ids_used", report["codebook"]["distinct_actions"]),
        "transitions": report["transitions"],
    }


def evaluate(checkpoint: str, cfg: RunConfig) -> dict:
    from lam.eval.evaluate import evaluate_checkpoint

    return scores(evaluate_checkpoint(checkpoint, cfg.data.data_dir, cfg.data.manifest, split="test", figures=False,
                                      out_dir=Path(checkpoint) / "eval_test"))


UNTRAINED_FIT_WINDOWS = 512  # training-split windows the untrained model's k-means ids are fitted on


def untrained_model(cfg: RunConfig):
    """The recipe's model with the seed's random weights, in eval mode; a continuous bottleneck
    gets its ids from k-means on training vectors, as after a trained epoch."""
    from lam.model import LatentActionModel

    torch.manual_seed(cfg.train.seed)
    model = LatentActionModel(cfg.model).eval()
    if model.quantizer.continuous:
        from lam.eval.evaluate import split_batches

        manifest = load_manifest(cfg.data.manifest, cfg.data.data_dir)
        with torch.no_grad():
            for x, *_ in split_batches(cfg.data.sequence_length, manifest, "train", 16, max_windows=UNTRAINED_FIT_WINDOWS):
                model.quantizer.remember(model.encode_actions(x)[1])
        model.quantizer.fit_centroids()
    return model


def untrained(cfg: RunConfig, folder: Path) -> dict:
    """The floor: the recipe's model with the seed's random weights, through the same evaluation."""
    from lam.runtime.checkpoint import save_checkpoint

    save_checkpoint(folder, model=untrained_model(cfg).state_dict(), config=cfg.to_dict(), epoch=0, step=0)
    return evaluate(str(folder), cfg)


def trained(cfg: RunConfig, epochs: int, run_name: str) -> dict:
    from lam.train.launch import train

    cfg.train.num_epochs, cfg.train.run_name = epochs, run_name
    start = time.time()
    outcome = train(cfg, verbose=False)
    result = evaluate(outcome.checkpoint_path, cfg)
    result["train_seconds"] = time.time() - start
    return result


def cached_ceiling(data_dir: Path, manifest, seed: int, minutes: float) -> dict:
    """The inverse-dynamics ceiling of a dataset and seed: it does not depend on the recipe, so it
    is fitted once and kept beside the data (delete the file to fit it again). A ceiling that its
    time cap stopped before it stopped improving is said so, since it lowers the gap's top."""
    from bench.idm import fit_inverse_dynamics

    path = data_dir / f"ceiling_seed{seed}.json"
    if path.is_file():
        result = json.loads(path.read_text())
    else:
        print(f"[quality] {data_dir.name}, seed {seed}: fitting the ceiling (inverse dynamics with the true actions)", flush=True)
        result = fit_inverse_dynamics(manifest, seed=seed, minutes=minutes, progress=False)
        path.write_text(json.dumps(result, indent=2) + "\n")
    refit = f"delete {path} and give a larger --ceiling_minutes"
    if result.get("stopped") == "time":
        cap = f" ({result['minutes']:g} min)" if "minutes" in result else ""  # the cap the fit ran under, not today's flag
        print(f"[quality] warning: {data_dir.name}, seed {seed}: the ceiling stopped at its time cap{cap} at step "
              f"{result['steps_run']}, best at {result['best_step']}: it may be too low; {refit}", flush=True)
    elif "stopped" not in result:
        print(f"[quality] warning: {data_dir.name}, seed {seed}: the cached ceiling does not say why its fit stopped "
              f"(written by an older version; it ran {result['steps_run']} steps, best at {result['best_step']}): a time cap "
              f"may have cut it short; {refit}", flush=True)
    return result


# ----------------------------------------------------------------------------- the table


def mean_std(values: list) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def gap_closed(ours: float, floor: float, ceiling: float) -> float | None:
    return None if ceiling - floor <= 1e-9 else (ours - floor) / (ceiling - floor)


def summarise(per_seed: list[dict]) -> dict:
    keys = ["probe_accuracy", "nmi", "delta_psnr", "mse_vs_copy_last", "action_ids_used"]
    return {
        "chance": mean_std([r["ours"]["chance"] for r in per_seed]),
        "untrained": {k: mean_std([r["untrained"][k] for r in per_seed]) for k in keys},
        "ceiling": mean_std([r["ceiling"]["test_accuracy"] for r in per_seed]),
        "ours": {k: mean_std([r["ours"][k] for r in per_seed]) for k in keys},
        "gap_closed": mean_std([gap_closed(r["ours"]["probe_accuracy"], r["untrained"]["probe_accuracy"],
                                           r["ceiling"]["test_accuracy"]) for r in per_seed]),
        # the leakage control: the true action probed from frame t-1 or frame t alone
        "frame_probe_accuracy": mean_std([r["ours"].get("frame_probe_accuracy") for r in per_seed]),
        # sampling error (bootstrap over test files, mean over seeds), to read the seeds' spread against
        "sampling_std": {k: mean_std([r["ours"].get(f"{k}_sampling_std") for r in per_seed])["mean"]
                         for k in ("probe_accuracy", "nmi")},
        "collapsed_seeds": sum(1 for r in per_seed if r["ours"]["action_ids_used"] <= 1),
    }


def fmt(stat: dict, digits: int = 2) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.{digits}f}±{stat['std']:.{digits}f}"


def table(report: dict) -> str:
    header = ["dataset", "chance", "frames only", "untrained", "ceiling (IDM)", "ours", "gap closed", "NMI",
              "dt-PSNR dB", "MSE/copy-last", "ids used"]
    rows = []
    for name, d in report["datasets"].items():
        s = d["summary"]
        rows.append([name, fmt(s["chance"]), fmt(s["frame_probe_accuracy"]), fmt(s["untrained"]["probe_accuracy"]), fmt(s["ceiling"]),
                     fmt(s["ours"]["probe_accuracy"]), fmt(s["gap_closed"]), fmt(s["ours"]["nmi"]),
                     fmt(s["ours"]["delta_psnr"]), fmt(s["ours"]["mse_vs_copy_last"]), fmt(s["ours"]["action_ids_used"], 1)])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("Probe accuracies on the test split (code -> action map for ours and untrained; a linear probe on one "
                 "frame for 'frames only'); ± is the std over seeds.")
    for name, d in report["datasets"].items():
        sampling = d["summary"].get("sampling_std", {})
        if sampling.get("probe_accuracy") is not None:
            lines.append(f"{name}: sampling error (bootstrap over test files) of ours: probe ±{sampling['probe_accuracy']:.3f}, "
                         f"NMI ±{sampling['nmi']:.3f}")
    return "\n".join(lines)


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "commit": commit}


# ----------------------------------------------------------------------------- main


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def load_earlier(path: str, recipe: str, overrides: dict) -> dict:
    """The report that `--extend` names, checked to be of the same recipe and --set."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--extend {path}: cannot read the report: {e}") from None
    if earlier.get("recipe") != recipe or earlier.get("overrides") != overrides:
        raise UserError(f"--extend {path}: it is of recipe {earlier.get('recipe')!r} with --set {earlier.get('overrides')}, "
                        f"not {recipe!r} with --set {overrides}")
    return earlier


def kept_seeds(earlier: list[tuple[str, dict]], name: str, epochs: int, seeds: int) -> list[dict]:
    """The runs of dataset `name` in the extended reports that this run keeps (seeds < `seeds`),
    each with the commit it was measured at. A seed in two reports must be the same run there."""
    kept: dict[int, tuple[str, dict]] = {}
    for path, report in earlier:
        d = report["datasets"].get(name)
        if d is None:
            continue
        if d["epochs"] != epochs:
            raise UserError(f"--extend {path}: {name} was trained {d['epochs']} epochs a run there, {epochs} here")
        for r in d["per_seed"]:
            if r["seed"] >= seeds:
                continue
            run = {"commit": report["machine"]["commit"], **r}
            if r["seed"] in kept and kept[r["seed"]][1] != run:
                raise UserError(f"--extend {path}: {name} seed {r['seed']} differs from the run of that seed in {kept[r['seed']][0]}")
            kept.setdefault(r["seed"], (path, run))
    return [run for _, run in kept.values()]


def unlisted_datasets(earlier: list[tuple[str, dict]], listed: list[str]) -> dict:
    """The datasets of the extended reports that this run does not list, kept as they were; one that
    two reports hold must be listed, so that its seeds are merged."""
    kept: dict[str, tuple[str, dict]] = {}
    for path, report in earlier:
        for name, d in report["datasets"].items():
            if name in listed:
                continue
            if name in kept and kept[name][1] != d:
                raise UserError(f"--extend {path}: {name} is also in {kept[name][0]}; list it in --datasets to merge its seeds")
            kept.setdefault(name, (path, d))
    return {name: d for name, (_, d) in kept.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo", choices=list(RECIPES), help="the recipe trained (default: demo)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config keys over the recipe, e.g. embed_dim=128")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per dataset: 0, 1, ... (default: 3)")
    parser.add_argument("--datasets", default="", help="comma-separated (default: synthetic and every real-play environment)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time per run, which sets the epochs (default: 3)")
    parser.add_argument("--epochs", type=int, default=0, help="fixed epochs per run instead of --minutes")
    parser.add_argument("--ceiling_minutes", type=float, default=15.0,
                        help="time cap of each ceiling's fit, which normally stops on its own when the validation "
                             "accuracy stops improving (default: 15)")
    parser.add_argument("--data_root", default=str(REPO / "bench" / "data"), help="where datasets are generated and reused")
    parser.add_argument("--workdir", default="", help="where runs go (default: a new temporary folder, kept: "
                        "every run's checkpoint and evaluation report)")
    parser.add_argument("--out", default="", help="JSON report (default: bench/quality-RECIPE.json)")
    parser.add_argument("--extend", action="append", default=[], metavar="REPORT",
                        help="an earlier report of the same recipe, --set and epochs: its seeds are kept and only the "
                        "missing ones of 0..SEEDS-1 are run (runs are seeded, so a seed run again gives the same "
                        "numbers); repeat it to merge the runs of several reports")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"python -m bench.quality: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    args.out = args.out or str(REPO / "bench" / f"quality-{args.recipe}.json")
    datasets = [d for d in args.datasets.split(",") if d] or ["synthetic", *realplay_envs()]
    known = {"synthetic", *realplay_envs()}
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise UserError(f"unknown datasets {unknown}; choose from {sorted(known)}")
    overrides = parse_set(args.set)
    check = apply_overrides(recipe_config(args.recipe), overrides, source="--set")
    check.data.data_dir = "-"
    check.validate()  # a bad key or value fails here, before any data is generated
    root = Path(args.data_root)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lam-quality-"))
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "recipe": args.recipe, "overrides": overrides,
              "seeds": args.seeds, "minutes": args.minutes, "datasets": {}}
    earlier = [(path, load_earlier(path, args.recipe, overrides)) for path in args.extend]
    if earlier:
        report["extends"] = [{"report": path, "commit": e["machine"]["commit"]} for path, e in earlier]
        report["datasets"] = unlisted_datasets(earlier, datasets)
    for name in datasets:
        data_dir = ensure_dataset(name, root)
        manifest = load_manifest(data_dir / "manifest.json", data_dir)
        probe_cfg = run_config(args.recipe, overrides, data_dir, workdir / "runs", 0)
        probe_cfg.validate()
        step_s = seconds_per_step(probe_cfg)
        epochs = args.epochs or epochs_for(probe_cfg, args.minutes, step_s)
        print(f"[quality] {name}: {epochs} epochs per run ({step_s:.2f} s a step of batch {probe_cfg.train.batch_size})", flush=True)
        per_seed = kept_seeds(earlier, name, epochs, args.seeds)
        for seed in sorted(set(range(args.seeds)) - {r["seed"] for r in per_seed}):
            ceiling = cached_ceiling(data_dir, manifest, seed, args.ceiling_minutes)
            print(f"[quality] {name}, seed {seed}: floor (untrained)", flush=True)
            cfg = run_config(args.recipe, overrides, data_dir, workdir / "runs", seed)
            floor = untrained(cfg, workdir / "untrained" / f"{name}-s{seed}")
            print(f"[quality] {name}, seed {seed}: training {epochs} epochs", flush=True)
            ours = trained(cfg, epochs, f"{name}-{args.recipe}-s{seed}")
            per_seed.append({"seed": seed, "commit": report["machine"]["commit"], "ceiling": ceiling, "untrained": floor, "ours": ours})
            print(f"[quality] {name}, seed {seed}: probe {ours['probe_accuracy']:.3f} (untrained {floor['probe_accuracy']:.3f}, "
                  f"ceiling {ceiling['test_accuracy']:.3f}, chance {ours['chance']:.3f}), NMI {ours['nmi']:.3f}, "
                  f"ids {ours['action_ids_used']}", flush=True)
        per_seed.sort(key=lambda r: r["seed"])
        report["datasets"][name] = {"epochs": epochs, "seconds_per_step": step_s, "per_seed": per_seed, "summary": summarise(per_seed)}
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")  # after every dataset: a long run keeps what it has
    print("")
    print(table(report))
    print(f"\n[quality] report: {args.out}; runs, checkpoints and evaluation reports: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
