"""The ceiling of action quality: an inverse-dynamics model trained *with* the true actions.

A small CNN reads one transition, the latent frames z[t-1] and z[t] and their difference,
and predicts the true action held during frame t (`InverseDynamics`: attention pooling beside
the mean, so that a small change is not averaged away by the rest of the picture). It is
trained on the train split's transitions (all of them, or a label budget: a fraction of them
spread over every train file), each moved by a random offset of a few latent pixels
(`shifted`), stops by patience on the val split's accuracy (never by a clock), and is scored
on *every* transition of the test split, once each: the same transitions, in the same files,
that `lam eval` scores the latent action model's probes on (they are cross-fitted over folds
of those files, so they too score every test transition). What it reaches is what
these latents allow a supervised model of this size to know about the actions; an
unsupervised model's probe accuracy is read between its floor and this.

    python -m bench.quality.idm ~/.cache/lam-bench/data/crafter --seed 0                        # fit, print, write the cache file
    python -m bench.quality.idm ~/.cache/lam-bench/data/crafter --seed 0 --label_fraction 0.01  # the 1% label budget

    from bench.quality.idm import fit_inverse_dynamics
    result = fit_inverse_dynamics(manifest, seed=0)   # {"test_accuracy": ..., "stopped": "patience", ...}

A fit stops for one of two reasons, recorded as `stopped`: `patience` (the val accuracy
stopped improving: converged) or `max_steps` (a safety limit; the fit may have had more to
learn, and `bench.quality` refuses such a ceiling, naming the command that refits it).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from lam.data.manifest import Manifest, load_manifest
from lam.eval.metrics import bootstrap_std
from lam.train.labels import label_budget  # the label head's labelled transitions are drawn alike

MAX_STEPS = 30_000  # a safety limit, far above where patience stops a fit on the yardstick's data
LABEL_BUDGETS = (0.01, 0.025, 0.10)  # fractions of the train transitions for the label-budget ceilings
# Recorded with every fit: a ceiling fitted by another version of the model is fitted again.
# 1: mean pooling, no augmentation. 2: attention pooling beside the mean, random shifts in training.
IDM_VERSION = 2
SHIFT = 4  # latent pixels a training pair may be moved each way


def transitions(manifest: Manifest, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every transition t-1 -> t (t >= 1) of the split's files, in file order then t: frames
    (n, 2, C, H, W) float16, the true action of frame t (n,) int64 and the file index of each
    (n,) int64. Files without `actions` are an error naming the file."""
    pairs, labels, files = [], [], []
    for i, rel in enumerate(manifest.split_files(split)):
        path = Path(manifest.data_dir) / rel
        with h5py.File(path, "r") as f:
            if "actions" not in f:
                raise ValueError(f"{path}: no `actions` dataset; the ceiling needs the true actions")
            latents = np.asarray(f[manifest.dataset_key][()], dtype=np.float16)  # (N, C, 2, H, W)
            actions = np.asarray(f["actions"][()]).reshape(-1).astype(np.int64)  # (2N,)
        z = latents.transpose(0, 2, 1, 3, 4).reshape(-1, *latents.shape[1:2], *latents.shape[3:])  # (2N, C, H, W)
        pairs.append(np.stack([z[:-1], z[1:]], axis=1))  # (2N-1, 2, C, H, W)
        labels.append(actions[1:])
        files.append(np.full(len(z) - 1, i, np.int64))
    return np.concatenate(pairs), np.concatenate(labels), np.concatenate(files)


def data_fingerprint(manifest: Manifest) -> str:
    """A short hash of the split (files per split) and of every file's latents and actions: a
    ceiling fitted on data with the same fingerprint (kept in a report) need not be fitted again; a
    cached ceiling of other data is. Bit for bit: the real-play sets, generated again on another
    machine, can differ in their latents' last bits, and then their ceilings are fitted again."""
    files = tuple((split, rel) for split in ("train", "val", "test") for rel in manifest.split_files(split))
    stats = tuple((stat.st_size, stat.st_mtime_ns) for stat in ((Path(manifest.data_dir) / rel).stat() for _, rel in files))
    return _content_hash(str(manifest.data_dir), manifest.dataset_key, files, stats)


@functools.lru_cache(maxsize=16)
def _content_hash(data_dir: str, key: str, files: tuple, stats: tuple) -> str:
    """`stats` (sizes, modification times) only key the cache: a rewritten file is hashed again."""
    h = hashlib.sha256()
    for split, rel in files:
        h.update(f"{split}:{rel}\n".encode())
        with h5py.File(Path(data_dir) / rel, "r") as f:
            for name in (key, "actions"):
                if name in f:
                    h.update(np.ascontiguousarray(f[name][()]).tobytes())
    return h.hexdigest()[:16]


class InverseDynamics(nn.Module):
    """(z[t-1], z[t]) -> action logits: three strided convolutions over the two frames and their
    difference, then two poolings side by side: the mean over the picture, and a mean weighted
    by a learned score of every place (attention pooling), so that a small change (a pointer that
    moved a few pixels) is not averaged away by the rest of the picture; a linear layer."""

    def __init__(self, channels: int, num_actions: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3 * channels, width, 4, stride=2, padding=1), nn.GELU(),  # 64 -> 32
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.GELU(),  # -> 16
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.GELU(),  # -> 8
        )
        self.score = nn.Conv2d(width, 1, 1)
        self.head = nn.Linear(2 * width, num_actions)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        prev, nxt = pairs[:, 0].float(), pairs[:, 1].float()  # (B, C, H, W)
        features = self.net(torch.cat([prev, nxt, nxt - prev], dim=1))  # (B, width, 8, 8)
        weights = torch.softmax(self.score(features).flatten(1), dim=1)  # (B, 64): where to look
        features = features.flatten(2)
        return self.head(torch.cat([(features * weights[:, None]).sum(2), features.mean(2)], dim=1))


def shifted(pairs: torch.Tensor, rng: np.random.Generator, margin: int = SHIFT) -> torch.Tensor:
    """Every pair moved by its own random offset of up to `margin` latent pixels each way (both
    frames alike, edges repeated): the action does not depend on where on the picture it shows,
    and a model that cannot place what it learned by position cannot learn a file's layout."""
    b, _, c, h, w = pairs.shape
    padded = nn.functional.pad(pairs.float().reshape(b, 2 * c, h, w), (margin,) * 4, mode="replicate")
    offsets = rng.integers(0, 2 * margin + 1, size=(b, 2))
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]).reshape(b, 2, c, h, w)


@torch.no_grad()
def predict(model: nn.Module, pairs: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(pairs[lo : lo + batch])).argmax(1).numpy() for lo in range(0, len(pairs), batch)]
    return np.concatenate(out).astype(np.int64)


def fit_inverse_dynamics(manifest: Manifest, seed: int = 0, label_fraction: float = 1.0, max_steps: int = MAX_STEPS,
                         eval_every: int = 50, patience: int = 8, batch_size: int = 32, lr: float = 1e-3,
                         bootstrap: int = 200, progress: bool = True) -> dict:
    """Train on the train split (or its `label_fraction` budget) in batches drawn with replacement,
    check the val accuracy every `eval_every` steps, keep the best, stop after `patience` checks
    without a better one (or at `max_steps`), and score the best on every test transition, with
    the bootstrap std over test files."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_x, train_y, train_files = transitions(manifest, "train")
    if label_fraction < 1.0:
        keep = label_budget(train_files, label_fraction, seed)
        train_x, train_y, train_files = train_x[keep], train_y[keep], train_files[keep]
    val_x, val_y, _ = transitions(manifest, "val")
    test_x, test_y, test_files = transitions(manifest, "test")
    num_actions = int(max(train_y.max(), val_y.max(), test_y.max())) + 1
    model = InverseDynamics(train_x.shape[2], num_actions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    best = {"val_accuracy": -1.0, "step": 0, "state": None}
    stopped = "max_steps"
    start = time.time()
    for step in range(1, max_steps + 1):
        model.train()
        sel = rng.integers(0, len(train_y), size=min(batch_size, len(train_y)))
        loss = nn.functional.cross_entropy(model(shifted(torch.from_numpy(train_x[sel]), rng)), torch.from_numpy(train_y[sel]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every and step != max_steps:
            continue
        val_acc = float(np.mean(predict(model, val_x) == val_y))
        if val_acc > best["val_accuracy"]:
            best = {"val_accuracy": val_acc, "step": step, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        if progress:
            print(f"[idm] step {step}: val accuracy {val_acc:.3f} (best {best['val_accuracy']:.3f} at {best['step']})", flush=True)
        if step - best["step"] >= patience * eval_every:
            stopped = "patience"
            break
    model.load_state_dict(best["state"])
    correct = predict(model, test_x) == test_y
    return {
        "test_accuracy": float(correct.mean()),
        "test_accuracy_std": bootstrap_std(lambda i: float(correct[i].mean()), test_files, bootstrap, seed),
        "val_accuracy": best["val_accuracy"],
        "best_step": best["step"],
        "steps_run": step,
        "stopped": stopped,  # patience: converged; max_steps: it may have had more to learn
        "patience_steps": patience * eval_every,
        "label_fraction": float(label_fraction),
        "transitions": {"train": len(train_y), "val": len(val_y), "test": len(test_y)},
        "train_files": int(np.unique(train_files).size),
        "data_fingerprint": data_fingerprint(manifest),
        "idm_version": IDM_VERSION,
        "seconds": time.time() - start,
    }


def fitted_version(result: dict) -> int:
    """The model version a fit was made with (fits from before versions were recorded: 1)."""
    return int(result.get("idm_version", 1))


def cache_path(data_dir: str | Path, seed: int, label_fraction: float = 1.0) -> Path:
    """Where `bench.quality` keeps a fitted ceiling, beside the data."""
    budget = "" if label_fraction >= 1.0 else f"_labels{label_fraction:g}"
    return Path(data_dir) / f"ceiling_seed{seed}{budget}.json"


def refit_command(data_dir: str | Path, seed: int, label_fraction: float = 1.0, max_steps: int = MAX_STEPS) -> str:
    budget = "" if label_fraction >= 1.0 else f" --label_fraction {label_fraction:g}"
    return f"python -m bench.quality.idm {data_dir} --seed {seed}{budget} --max_steps {max_steps}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.idm", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", help="a dataset folder with manifest.json and files with `actions` (e.g. ~/.cache/lam-bench/data/crafter)")
    parser.add_argument("--seed", type=int, default=0, help="the fit's seed (default: 0)")
    parser.add_argument("--label_fraction", type=float, default=1.0,
                        help="fraction of the train transitions whose labels it trains on, spread over every train file (default: 1)")
    parser.add_argument("--max_steps", type=int, default=MAX_STEPS, help=f"safety limit on optimizer steps (default: {MAX_STEPS})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    manifest_path = Path(args.data_dir) / "manifest.json"
    if not manifest_path.is_file():
        print(f"python -m bench.quality.idm: error: {manifest_path}: no manifest (generate the data with python -m bench.quality first)", file=sys.stderr)
        return 2
    if not 0.0 < args.label_fraction <= 1.0 or args.max_steps < 1:
        print("python -m bench.quality.idm: error: --label_fraction must be in (0, 1] and --max_steps >= 1", file=sys.stderr)
        return 2
    manifest = load_manifest(manifest_path, args.data_dir)
    try:
        result = fit_inverse_dynamics(manifest, seed=args.seed, label_fraction=args.label_fraction, max_steps=args.max_steps,
                                      progress=not args.quiet)
    except ValueError as e:
        print(f"python -m bench.quality.idm: error: {e}", file=sys.stderr)
        return 2
    path = cache_path(args.data_dir, args.seed, args.label_fraction)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[idm] test accuracy {result['test_accuracy']:.3f} ± {result['test_accuracy_std']:.3f} on {result['transitions']['test']} "
          f"transitions; stopped by {result['stopped']} at step {result['steps_run']} (best {result['best_step']}); wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
