"""Action quality on real rendered play and on the synthetic world: several seeds, a floor and a ceiling.

    python -m bench.quality --recipe real --seeds 3 --epochs 16          # the baseline table
    python -m bench.quality --datasets synthetic --seeds 1 --minutes 1    # a quick look
    python -m bench.quality --recipe real --seeds 3 --epochs 4 --extend screen.json --out full.json   # seeds 1, 2 added
    python -m bench.quality --table bench/results/quality-v2-real-4epochs.json --readme README.md  # the table again, and into the README
    python -m bench.quality --prepare --seeds 3                            # only generate the data and fit the ceilings

For every dataset and seed it trains the recipe (`lam.train.launch.train`, as `lam train`
does), evaluates the final checkpoint on the test split (`lam.eval`, as `lam eval` does),
and reads it against these rows, every one scored on exactly the same test transitions,
each once (the code -> action map and the linear probes are cross-fitted over 5 folds of
test files; the ceiling is scored on every test transition; a run whose rows disagree on
the count stops with an error):
  - chance: the majority action of the other folds;
  - frames only: a linear probe on frame t-1 alone or frame t alone (the better one), what
    a single frame gives away;
  - untrained: the same model with its seed's random weights, through the same evaluation;
  - the ceiling: an inverse-dynamics model trained with the true actions on the same split
    (`bench/quality/idm.py`), stopped by patience on validation (a ceiling that did not converge is
    refused, with the command that fits it again), and the same model trained on 1%, 2.5% and
    10% of the train labels (label-budget ceilings), for runs that use that many labels.
The headline, "gap closed beyond one frame", is (model - max(untrained, frames only)) /
(ceiling - the same): what the model knows that one frame cannot tell; "gap closed over
untrained" is beside it. Also: NMI, controllability (delta-t PSNR), next-frame MSE relative
to copying the last frame, the action ids used. Every figure is a mean ± std over seeds
(seeds vary the model, never the test data); the sampling spread (bootstrap over test
files) is reported apart. The true actions are only ever read by the evaluation and the
ceilings, never by training.

Datasets: `synthetic` (`lam synth`'s world) and the real-play environments of
`bench.quality.realplay` (rendered episodes turned into VVAE-shaped latents; `pip install -e
'.[bench]'`), each with at least 20 test files and 2,000 test transitions. Data are
generated once under --data_root and reused (`dataset.json` there records how and how
long); ceilings are fitted once per seed and cached beside the data. Training time per
run is set by --minutes: the epochs are chosen from a timing of the recipe's training step
on this machine (the JSON records the epochs used), or fixed with --epochs.
Writes ~/.cache/lam-bench/quality-RECIPE.json ($LAM_BENCH_HOME; --out) and prints the table
(Markdown); the reports the docs cite are in bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
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

from bench.home import REPO, bench_home
from bench.quality.idm import IDM_VERSION, LABEL_BUDGETS, cache_path, data_fingerprint, fit_inverse_dynamics, fitted_version, refit_command
from lam.config import RunConfig, apply_overrides
from lam.data.manifest import create_manifest, load_manifest, write_manifest
from lam.data.windows import build_window_index
from lam.errors import UserError
from lam.recipes import RECIPES, recipe_config

YARDSTICK_VERSION = 2  # reports of another version are not merged by --extend: their rows were scored otherwise
# Every dataset has at least 20 test files and 2,000 test transitions, so that the sampling spread
# of a probe (bootstrap over test files) is small next to the spread between seeds.
SYNTHETIC = {"files": 64, "chunks": 48}  # 24 test files of 96 latent frames
REALPLAY = {"episodes": 64, "chunks": 48}  # 24 test episodes of 96 latent frames
SPLIT = (0.5, 0.125, 0.375)  # by file: 32 train, 8 val, 24 test
MIN_TEST_FILES, MIN_TEST_TRANSITIONS = 20, 2000


# ----------------------------------------------------------------------------- datasets


def realplay_envs() -> list[str]:
    from bench.quality.realplay.base import ENVIRONMENTS

    return list(ENVIRONMENTS)


def dataset_spec(name: str) -> dict:
    """What a dataset is generated with; a folder generated otherwise is generated again."""
    from bench.quality.realplay.encoder import ENCODER_VERSION
    from bench.quality.realplay.generate import GENERATOR_VERSION

    if name == "synthetic":
        return {"generator": "lam.data.synth", **SYNTHETIC, "seed": 0}
    from bench.quality.realplay.base import env_class

    # "bench.realplay" names the generator in every report and file written since it existed (its
    # module has moved under bench.quality since): a new name would read every kept run as other data.
    return {"generator": "bench.realplay", "generator_version": GENERATOR_VERSION, "encoder_version": ENCODER_VERSION,
            "env_version": env_class(name).version, **REALPLAY, "seed": 0}


def ensure_dataset(name: str, root: Path) -> Path:
    """The dataset's folder with its manifest, generated on first use (and again when it was made
    with other sizes or by an older generator). `dataset.json` records how and how long. One
    process at a time: another one that needs the set meanwhile waits, then uses it (without the
    lock it would see no stamp yet and delete the files being written)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[quality] {root / name}: another process is generating it; waiting", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_dataset(name, root)


def _ensure_dataset(name: str, root: Path) -> Path:
    data_dir = root / name
    stamp_path = data_dir / "dataset.json"
    spec = dataset_spec(name)
    stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
    if stamp.get("spec") == spec and (data_dir / "manifest.json").is_file():
        return data_dir
    if data_dir.exists():
        print(f"[quality] {data_dir} was generated otherwise than {spec}: generating it again", flush=True)
        for old in [*data_dir.rglob("*.h5"), *data_dir.glob("ceiling_seed*.json"), stamp_path]:
            old.unlink(missing_ok=True)
    print(f"[quality] generating dataset {name} in {data_dir}", flush=True)
    start = time.time()
    if name == "synthetic":
        from lam.data.synth import write_synthetic_dataset

        write_synthetic_dataset(data_dir, files=spec["files"], chunks=spec["chunks"], seed=spec["seed"])
    else:
        from bench.quality.realplay.generate import generate

        generate(name, root, episodes=spec["episodes"], chunks=spec["chunks"], seed=spec["seed"])
    seconds = time.time() - start
    write_manifest(create_manifest(data_dir, *SPLIT, seed=42), data_dir / "manifest.json")
    stamp_path.write_text(json.dumps({"spec": spec, "split": list(SPLIT), "generation_seconds": round(seconds, 1),
                                      "machine": machine()}, indent=2) + "\n")
    return data_dir


def split_size(manifest) -> dict:
    """Files and transitions (t >= 1 of every file) of the test split, and whether they are enough."""
    files = manifest.split_files("test")
    transitions = sum(manifest.files[f]["n_frames"] - 1 for f in files)
    return {"files": len(files), "transitions": int(transitions),
            "enough": len(files) >= MIN_TEST_FILES and transitions >= MIN_TEST_TRANSITIONS}


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
    """The numbers compared across runs, from a `lam eval` report. Every probe there is cross-fitted
    over folds of the test files, so each accuracy is over every test transition, once."""
    gt = report.get("ground_truth") or {}
    if not gt:
        raise UserError(f"{report.get('checkpoint')}: the evaluation has no ground truth: the test files need `actions`")
    return {
        "probe_accuracy": gt.get("code_map_accuracy"),
        "probe_accuracy_sampling_std": gt.get("code_map_accuracy_std"),  # bootstrap over test files
        "frame_probe_accuracy": gt.get("best_frame_probe_accuracy"),  # what one frame alone tells
        "frame_probe_accuracy_sampling_std": gt.get(f"{gt.get('best_frame_probe')}_accuracy_std"),
        "nmi": gt.get("nmi"),
        "nmi_sampling_std": gt.get("nmi_std"),
        "chance": gt.get("chance_accuracy"),
        "chance_sampling_std": gt.get("chance_accuracy_std"),
        "delta_psnr": report["delta_psnr"],
        "mse_vs_copy_last": report["next_frame"]["mse"] / report["copy_last_baseline"]["mse"],
        "action_ids_used": report.get("action_ids_used", report["codebook"]["distinct_actions"]),
        "transitions": gt["transitions"],
        "scored_transitions": gt.get("scored_transitions"),
        "probe_split": gt.get("probe_split"),
    }


def evaluate(checkpoint: str, cfg: RunConfig) -> dict:
    from lam.eval.evaluate import evaluate_checkpoint

    return scores(evaluate_checkpoint(checkpoint, cfg.data.data_dir, cfg.data.manifest, split="test", figures=False,
                                      out_dir=Path(checkpoint) / "eval_test"))


# The last epoch's val metrics a report keeps per run (`bench/score_ranking.py`).
VAL_SCORES = ("val/loss", "val/mse_loss", "val/delta_psnr", "val/action_perplexity", "val/action_ids_used", "val/codebook_usage",
              "val/nmi", "val/code_map_accuracy")

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
    # What training itself saw of the run on val, without test labels: the candidates that
    # `python -m bench.quality.score_ranking` compares with the test probe as ways to rank runs.
    result["val_scores"] = {k: float(v) for k, v in outcome.metrics.items() if k in VAL_SCORES}
    return result


def stale(ceiling: dict, fingerprint: str) -> str | None:
    """Why a fitted ceiling cannot be read as this data's ceiling (None: it can)."""
    if ceiling.get("data_fingerprint") != fingerprint:
        return "was fitted on other data"
    version = fitted_version(ceiling)
    if version != IDM_VERSION:
        return f"was fitted by inverse-dynamics model version {version}, not {IDM_VERSION}"
    return None


def cached_ceiling(data_dir: Path, manifest, seed: int, label_fraction: float = 1.0, kept: dict | None = None) -> dict:
    """The inverse-dynamics ceiling of a dataset, seed and label budget. It does not depend on the
    recipe, so it is fitted once and kept beside the data (fitted again when the data or the model
    changed). `kept`: the same ceiling as an earlier report holds it; when it was fitted on the same
    data (the same content, bit for bit) by the same model, it is used and cached
    instead of being fitted again. A ceiling that did not stop by patience on validation did not
    converge: it is refused, with the command that fits it again."""
    path = cache_path(data_dir, seed, label_fraction)
    fingerprint = data_fingerprint(manifest)
    result = json.loads(path.read_text()) if path.is_file() else None
    if result is not None and (why := stale(result, fingerprint)):
        print(f"[quality] {path} {why}: fitting it again", flush=True)
        result = None
    if result is None and kept is not None and stale(kept, fingerprint) is None:
        result = kept
        path.write_text(json.dumps(result, indent=2) + "\n")
    if result is None:
        budget = "all" if label_fraction >= 1.0 else f"{label_fraction:.1%} of the"
        print(f"[quality] {data_dir.name}, seed {seed}: fitting the ceiling (inverse dynamics with {budget} train labels)", flush=True)
        result = fit_inverse_dynamics(manifest, seed=seed, label_fraction=label_fraction, progress=False)
        path.write_text(json.dumps(result, indent=2) + "\n")
    if result.get("stopped") != "patience":
        raise UserError(f"{path}: the ceiling stopped by {result.get('stopped', 'an unrecorded reason')} at step "
                        f"{result.get('steps_run')} (best at {result.get('best_step')}), not by patience on validation: it may "
                        f"be too low; fit it again with a larger limit: {refit_command(data_dir, seed, label_fraction, 4 * result.get('steps_run', 0) or 60_000)}")
    return result


def ceilings(data_dir: Path, manifest, seed: int, kept: dict | None = None, label_fraction: float = 0.0) -> dict:
    """The full ceiling and the label-budget ceilings of one seed: {"all": ..., "0.01": ..., ...},
    and that of the run's own `label_fraction` where it is not one of them (trained on the very
    transitions the run's label head sees). `kept`: an earlier report's ceilings of that seed,
    used where still current (`cached_ceiling`)."""
    kept = kept or {}
    out = {"all": cached_ceiling(data_dir, manifest, seed, kept=kept.get("all"))}
    extra = (label_fraction,) if 0.0 < label_fraction < 1.0 and label_fraction not in LABEL_BUDGETS else ()
    for fraction in sorted((*LABEL_BUDGETS, *extra)):
        out[f"{fraction:g}"] = cached_ceiling(data_dir, manifest, seed, fraction, kept=kept.get(f"{fraction:g}"))
    return out


def budget_key(label_fraction: float) -> str:
    """The key in a run's `ceilings` of the ceiling trained on the same labels as the run."""
    return "all" if label_fraction >= 1.0 else f"{label_fraction:g}"


# ----------------------------------------------------------------------------- the table


def mean_std(values: list) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def gap_closed(ours: float, floor: float, ceiling: float) -> float | None:
    return None if ceiling - floor <= 1e-9 else (ours - floor) / (ceiling - floor)


def check_same_transitions(name: str, run: dict) -> int:
    """Every row of one seed is scored on the same test transitions, each once: the count of every
    row is the test split's; a row scored on another set is an error, not a number."""
    counts = {
        "test split": run["test_transitions"],
        "untrained": run["untrained"]["scored_transitions"],
        "model": run["ours"]["scored_transitions"],
        **{f"ceiling ({budget} labels)": c["transitions"]["test"] for budget, c in run["ceilings"].items()},
    }
    if len(set(counts.values())) != 1:
        raise UserError(f"{name}, seed {run['seed']}: the rows are scored on different numbers of test transitions {counts}")
    return run["test_transitions"]


def summarise(per_seed: list[dict], label_fraction: float = 0.0) -> dict:
    """Mean and std over seeds of every row, the gaps closed, and the sampling spread (the bootstrap
    std over test files, averaged over seeds) to read the seeds' spread against. A run trained
    with `label_fraction` of the train labels is also read against the ceiling trained on those
    same labels ("same_labels")."""
    keys = ["probe_accuracy", "nmi", "delta_psnr", "mse_vs_copy_last", "action_ids_used"]
    budgets = list(per_seed[0]["ceilings"]) if per_seed else []
    ceiling = lambda r, b="all": r["ceilings"][b]["test_accuracy"]  # noqa: E731
    one_frame = lambda r: max(r["untrained"]["probe_accuracy"], r["ours"]["frame_probe_accuracy"])  # noqa: E731
    sampling = {
        "chance": [r["ours"]["chance_sampling_std"] for r in per_seed],
        "frames_only": [r["ours"]["frame_probe_accuracy_sampling_std"] for r in per_seed],
        "untrained": [r["untrained"]["probe_accuracy_sampling_std"] for r in per_seed],
        "ceiling": [r["ceilings"]["all"].get("test_accuracy_std") for r in per_seed],
        "ours": [r["ours"]["probe_accuracy_sampling_std"] for r in per_seed],
        "nmi": [r["ours"]["nmi_sampling_std"] for r in per_seed],
    }
    return {
        "transitions": sorted({r["test_transitions"] for r in per_seed}),
        "chance": mean_std([r["ours"]["chance"] for r in per_seed]),
        "frames_only": mean_std([r["ours"]["frame_probe_accuracy"] for r in per_seed]),
        "untrained": {k: mean_std([r["untrained"][k] for r in per_seed]) for k in keys},
        "ceiling": mean_std([ceiling(r) for r in per_seed]),
        "label_budget_ceilings": {b: mean_std([ceiling(r, b) for r in per_seed]) for b in budgets if b != "all"},
        "ceiling_stopped": sorted({c["stopped"] for r in per_seed for c in r["ceilings"].values()}),
        "ours": {k: mean_std([r["ours"][k] for r in per_seed]) for k in keys},
        # the headline: what the model knows beyond the best of its untrained self and one frame alone
        "gap_closed": mean_std([gap_closed(r["ours"]["probe_accuracy"], one_frame(r), ceiling(r)) for r in per_seed]),
        "gap_closed_over_untrained": mean_std([gap_closed(r["ours"]["probe_accuracy"], r["untrained"]["probe_accuracy"],
                                                          ceiling(r)) for r in per_seed]),
        "sampling_std": {k: mean_std(v)["mean"] for k, v in sampling.items()},
        "collapsed_seeds": sum(1 for r in per_seed if r["ours"]["action_ids_used"] <= 1),
        **({"same_labels": same_labels(per_seed, label_fraction)} if label_fraction > 0 else {}),
    }


def same_labels(per_seed: list[dict], label_fraction: float) -> dict:
    """A run with labels against what its labels alone give: the model's probe minus the ceiling
    trained on the same labels, and the model's probe as a share of the full-label ceiling."""
    key = budget_key(label_fraction)
    ours = lambda r: r["ours"]["probe_accuracy"]  # noqa: E731
    return {"label_fraction": label_fraction,
            "ceiling": mean_std([r["ceilings"][key]["test_accuracy"] for r in per_seed]),
            "model_minus_ceiling": mean_std([ours(r) - r["ceilings"][key]["test_accuracy"] for r in per_seed]),
            "share_of_full_ceiling": mean_std([ours(r) / r["ceilings"]["all"]["test_accuracy"] for r in per_seed])}


def fmt(stat: dict, digits: int = 2) -> str:
    if stat is None or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def table(report: dict) -> str:
    """The report as a Markdown table and its notes (what the README's results table is made of)."""
    budgets = [f"{b:g}" for b in LABEL_BUDGETS]
    header = ["dataset", "test files / transitions", "chance", "frames only", "untrained", "ceiling (IDM)",
              *[f"IDM {float(b):.1%} labels" for b in budgets], "model", "gap closed beyond one frame",
              "gap closed over untrained", "NMI", "Δt-PSNR dB", "MSE / copy-last", "ids used"]
    rows, notes = [], []
    for name, d in report["datasets"].items():
        s = d["summary"]
        rows.append([name, f"{d.get('test_files', '-')} / {', '.join(map(str, s['transitions']))}", fmt(s["chance"]),
                     fmt(s["frames_only"]), fmt(s["untrained"]["probe_accuracy"]), fmt(s["ceiling"]),
                     *[fmt(s["label_budget_ceilings"].get(b)) for b in budgets], fmt(s["ours"]["probe_accuracy"]),
                     f"**{fmt(s['gap_closed'])}**", fmt(s["gap_closed_over_untrained"]), fmt(s["ours"]["nmi"]),
                     fmt(s["ours"]["delta_psnr"]), fmt(s["ours"]["mse_vs_copy_last"]), fmt(s["ours"]["action_ids_used"], 1)])
        sampling = s["sampling_std"]
        commits = sorted({r.get("commit", report["machine"]["commit"]) for r in d["per_seed"]})
        spread = ", ".join(f"{k} ±{v:.3f}" for k, v in sampling.items() if v is not None)
        seeds = len(d["per_seed"])
        versions = sorted({fitted_version(c) for r in d["per_seed"] for c in r["ceilings"].values()})
        notes.append(f"- {name}: {seeds} seed{'s' if seeds != 1 else ''}, {d['epochs']} epochs; sampling spread (bootstrap over test files): "
                     f"{spread}; ceilings stopped by {', '.join(s['ceiling_stopped'])} (inverse-dynamics model version "
                     f"{', '.join(map(str, versions))}); commit {', '.join(commits)}")
        if "same_labels" in s:
            same = s["same_labels"]
            notes.append(f"- {name}: trained with {same['label_fraction']:.1%} of the train labels: model - IDM on the same "
                         f"labels ({fmt(same['ceiling'])}) = {fmt(same['model_minus_ceiling'])}; model / full-label ceiling = "
                         f"{fmt(same['share_of_full_ceiling'])}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", f"Recipe `{report['recipe']}`" + (f" with {report['overrides']}" if report.get("overrides") else "")
              + ", code -> action probe accuracy on every test transition (cross-fitted over 5 folds of test files); "
              "± is the std over seeds. Gap closed beyond one frame = (model - max(untrained, frames only)) / "
              "(ceiling - the same); over untrained = (model - untrained) / (ceiling - untrained).", *notes]
    return "\n".join(lines)


def short_table(report: dict, report_path: str) -> str:
    """The headline rows of a report, for the README: the full table (label budgets, NMI, the
    sampling spread, the commits) is `python -m bench.quality --table REPORT`."""
    header = ["dataset", "seeds", "chance", "frames only", "untrained", "ceiling (IDM)", "model",
              "gap closed beyond one frame", "Δt-PSNR dB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, d in report["datasets"].items():
        s = d["summary"]
        row = [name, len(d["per_seed"]), fmt(s["chance"]), fmt(s["frames_only"]), fmt(s["untrained"]["probe_accuracy"]),
               fmt(s["ceiling"]), fmt(s["ours"]["probe_accuracy"]), f"**{fmt(s['gap_closed'])}**", fmt(s["ours"]["delta_psnr"])]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    epochs = sorted({d["epochs"] for d in report["datasets"].values()})
    lines += ["", f"Recipe `{report['recipe']}`, {', '.join(map(str, epochs))} epochs a run, code -> action probe accuracy "
              "on every test transition; ± is the std over seeds. Full table (label-budget ceilings, NMI, "
              f"sampling spread, commits): `python -m bench.quality --table {report_path}`."]
    return "\n".join(lines)


README_START, README_END = "<!-- quality-table:start -->", "<!-- quality-table:end -->"


def write_readme_table(report_path: str, readme: Path) -> None:
    """Put the report's headline table in the README between its markers, with the command that made it."""
    report = json.loads(Path(report_path).read_text())
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise UserError(f"{readme}: no {README_START} ... {README_END} markers to put the table between")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    body = f"\n<!-- made by: python -m bench.quality --table {report_path} --readme {readme.name} -->\n{short_table(report, report_path)}\n"
    readme.write_text(head + README_START + body + README_END + tail)


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
    if earlier.get("yardstick") != YARDSTICK_VERSION:
        raise UserError(f"--extend {path}: it was scored by yardstick version {earlier.get('yardstick', 1)}, not "
                        f"{YARDSTICK_VERSION} (other test data or probes): its seeds cannot be merged")
    if earlier.get("recipe") != recipe or earlier.get("overrides") != overrides:
        raise UserError(f"--extend {path}: it is of recipe {earlier.get('recipe')!r} with --set {earlier.get('overrides')}, "
                        f"not {recipe!r} with --set {overrides}")
    return earlier


def kept_seeds(earlier: list[tuple[str, dict]], name: str, epochs: int, seeds: int, spec: dict) -> list[dict]:
    """The runs of dataset `name` in the extended reports that this run keeps (seeds < `seeds`),
    each with the commit it was measured at. A seed in two reports must be the same run there.
    Runs on data generated otherwise than `spec` (an environment changed since) are left out, so
    they are run again. A kept run's ceilings are checked afterwards (`ceilings`)."""
    kept: dict[int, tuple[str, dict]] = {}
    for path, report in earlier:
        d = report["datasets"].get(name)
        if d is None:
            continue
        if d.get("data") != spec:
            print(f"[quality] --extend {path}: its {name} runs were on data generated as {d.get('data')}, not {spec}: "
                  "they are run again", flush=True)
            continue
        if d["epochs"] != epochs:
            raise UserError(f"--extend {path}: {name} was trained {d['epochs']} epochs a run there, {epochs} here")
        for r in d["per_seed"]:
            if r["seed"] >= seeds:
                continue
            run = {"commit": report["machine"]["commit"], **r}
            if r["seed"] in kept and without_ceilings(kept[r["seed"]][1]) != without_ceilings(run):
                raise UserError(f"--extend {path}: {name} seed {r['seed']} differs from the run of that seed in {kept[r['seed']][0]}")
            kept.setdefault(r["seed"], (path, run))
    return [run for _, run in kept.values()]


def without_ceilings(run: dict) -> dict:
    """A run as trained and evaluated; its ceilings may have been fitted again since."""
    return {k: v for k, v in run.items() if k != "ceilings"}


def carried_datasets(earlier: list[tuple[str, dict]], listed: list[str]) -> dict:
    """The datasets of the extended reports as they were, where the new report starts from: an
    unlisted one stays so, a listed one until this run has merged its seeds (so a run stopped
    half-way still holds every dataset). An unlisted one that two reports hold must be listed,
    so that its seeds are merged."""
    kept: dict[str, tuple[str, dict]] = {}
    for path, report in earlier:
        for name, d in report["datasets"].items():
            if name in kept and kept[name][1] != d and name not in listed:
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
    parser.add_argument("--data_root", default=str(bench_home() / "data"), help="where datasets are generated and reused (default: $LAM_BENCH_HOME/data, ~/.cache/lam-bench/data unless set)")
    parser.add_argument("--workdir", default="", help="where runs go (default: a new temporary folder, kept: "
                        "every run's checkpoint and evaluation report)")
    parser.add_argument("--out", default="", help="JSON report (default: $LAM_BENCH_HOME/quality-RECIPE.json, ~/.cache/lam-bench unless set)")
    parser.add_argument("--extend", action="append", default=[], metavar="REPORT",
                        help="an earlier report of the same recipe, --set and epochs: its seeds are kept and only the "
                        "missing ones of 0..SEEDS-1 are run (runs are seeded, so a seed run again gives the same "
                        "numbers); repeat it to merge the runs of several reports")
    parser.add_argument("--prepare", action="store_true",
                        help="generate the datasets and fit their ceilings for seeds 0..SEEDS-1, train nothing")
    parser.add_argument("--table", default="", metavar="REPORT", help="print the table of a written report and train nothing")
    parser.add_argument("--readme", default="", metavar="README",
                        help="with --table: also put the headline table in this file between its quality-table markers")
    args = parser.parse_args(argv)
    try:
        if args.table:
            if args.readme:
                write_readme_table(args.table, Path(args.readme))
            print(table(json.loads(Path(args.table).read_text())))
            return 0
        if args.readme:
            raise UserError("--readme goes with --table REPORT")
        return prepare(args) if args.prepare else run(args)
    except UserError as e:
        print(f"python -m bench.quality: error: {e}", file=sys.stderr)
        return 2


def chosen_datasets(spec: str) -> list[str]:
    datasets = [d for d in spec.split(",") if d] or ["synthetic", *realplay_envs()]
    known = {"synthetic", *realplay_envs()}
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise UserError(f"unknown datasets {unknown}; choose from {sorted(known)}")
    return datasets


def prepare(args) -> int:
    """--prepare: every dataset generated and every ceiling fitted, with how long each took."""
    for name in chosen_datasets(args.datasets):
        data_dir = ensure_dataset(name, Path(args.data_root))
        manifest = load_manifest(data_dir / "manifest.json", data_dir)
        stamp = json.loads((data_dir / "dataset.json").read_text())
        size = split_size(manifest)
        print(f"[quality] {name}: {size['files']} test files, {size['transitions']} test transitions; generated in "
              f"{stamp['generation_seconds']:.0f} s at commit {stamp['machine']['commit']}", flush=True)
        for seed in range(args.seeds):
            start = time.time()
            fitted = ceilings(data_dir, manifest, seed)
            print(f"[quality] {name}, seed {seed}: ceilings " + ", ".join(
                f"{budget} labels {c['test_accuracy']:.3f} (step {c['best_step']}, {c['stopped']})" for budget, c in fitted.items())
                + f" ({time.time() - start:.0f} s)", flush=True)
    return 0


def run(args) -> int:
    args.out = args.out or str(bench_home() / f"quality-{args.recipe}.json")
    datasets = chosen_datasets(args.datasets)
    overrides = parse_set(args.set)
    check = apply_overrides(recipe_config(args.recipe), overrides, source="--set")
    check.data.data_dir = "-"
    check.validate()  # a bad key or value fails here, before any data is generated
    label_fraction = check.train.label_fraction  # a run with labels is also read against the ceiling on the same labels
    root = Path(args.data_root)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lam-quality-"))
    report = {"yardstick": YARDSTICK_VERSION, "date": dt.date.today().isoformat(), "machine": machine(), "recipe": args.recipe, "overrides": overrides,
              "seeds": args.seeds, "minutes": args.minutes, "datasets": {}}
    earlier = [(path, load_earlier(path, args.recipe, overrides)) for path in args.extend]
    if earlier:
        report["extends"] = [{"report": path, "commit": e["machine"]["commit"]} for path, e in earlier]
        report["datasets"] = carried_datasets(earlier, datasets)
    for name in datasets:
        spec = dataset_spec(name)
        data_dir = ensure_dataset(name, root)
        manifest = load_manifest(data_dir / "manifest.json", data_dir)
        size = split_size(manifest)
        if not size["enough"]:
            print(f"[quality] warning: {name}: the test split has {size['files']} files and {size['transitions']} transitions, "
                  f"fewer than the {MIN_TEST_FILES} and {MIN_TEST_TRANSITIONS} that keep its sampling spread small", flush=True)
        probe_cfg = run_config(args.recipe, overrides, data_dir, workdir / "runs", 0)
        probe_cfg.validate()
        step_s = seconds_per_step(probe_cfg)
        epochs = args.epochs or epochs_for(probe_cfg, args.minutes, step_s)
        print(f"[quality] {name}: {epochs} epochs per run ({step_s:.2f} s a step of batch {probe_cfg.train.batch_size})", flush=True)
        per_seed = kept_seeds(earlier, name, epochs, args.seeds, spec)
        for kept in per_seed:  # a kept run is read against its seed's current ceilings
            current = ceilings(data_dir, manifest, kept["seed"], kept=kept.get("ceilings"), label_fraction=label_fraction)
            if current != kept.get("ceilings"):
                print(f"[quality] {name}, seed {kept['seed']}: the kept run is read against ceilings fitted again", flush=True)
                kept["ceilings"] = current
            check_same_transitions(name, kept)
        for seed in sorted(set(range(args.seeds)) - {r["seed"] for r in per_seed}):
            fitted = ceilings(data_dir, manifest, seed, label_fraction=label_fraction)  # first: a refused ceiling stops the run before training
            print(f"[quality] {name}, seed {seed}: floor (untrained)", flush=True)
            cfg = run_config(args.recipe, overrides, data_dir, workdir / "runs", seed)
            floor = untrained(cfg, workdir / "untrained" / f"{name}-s{seed}")
            print(f"[quality] {name}, seed {seed}: training {epochs} epochs", flush=True)
            ours = trained(cfg, epochs, f"{name}-{args.recipe}-s{seed}")
            result = {"seed": seed, "commit": report["machine"]["commit"], "test_transitions": size["transitions"],
                      "ceilings": fitted, "untrained": floor, "ours": ours}
            check_same_transitions(name, result)
            per_seed.append(result)
            print(f"[quality] {name}, seed {seed}: probe {ours['probe_accuracy']:.3f} (untrained {floor['probe_accuracy']:.3f}, "
                  f"frames only {ours['frame_probe_accuracy']:.3f}, ceiling {fitted['all']['test_accuracy']:.3f}, chance "
                  f"{ours['chance']:.3f}; each on {size['transitions']} test transitions), NMI {ours['nmi']:.3f}, "
                  f"ids {ours['action_ids_used']}", flush=True)
        per_seed.sort(key=lambda r: r["seed"])
        stamp = json.loads((data_dir / "dataset.json").read_text()) if (data_dir / "dataset.json").is_file() else {}
        report["datasets"][name] = {"data": spec, "epochs": epochs, "seconds_per_step": step_s, "test_files": size["files"],
                                    "generation_seconds": stamp.get("generation_seconds"), "per_seed": per_seed,
                                    "summary": summarise(per_seed, label_fraction)}
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")  # after every dataset: a long run keeps what it has
    print("")
    print(table(report))
    print(f"\n[quality] report: {args.out}; runs, checkpoints and evaluation reports: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
