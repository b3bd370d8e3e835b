"""Train/val/test manifests: which file belongs to which split.

The split is by *file* (one file = one video), so no window of a test video is
ever trained on. It is deterministic for a seed whatever order the filesystem
lists files in: paths are sorted first, then shuffled with `random.Random(seed)`.

Rounding: split sizes use the largest-remainder method. Each split first gets
`floor(ratio * n)` files; the files left over go, one each, to the splits with
the largest fractional parts (ties in train, val, test order). So sizes always
add up to n and differ from `ratio * n` by less than one. If that leaves train
empty while files exist, train takes one file from the largest other split.
Empty val/test splits are warned about.

Schema of `manifest.json` (version 1):
    {
      "version": 1,
      "created": "2026-11-25T12:00:00+00:00",
      "seed": 42,
      "ratios": {"train": 0.8, "val": 0.1, "test": 0.1},
      "dataset_key": "latents",
      "latent_shape": {"channels": 16, "t_latent": 2, "height": 64, "width": 64},
      "splits": {"train": ["a.h5", "sub/b.h5"], "val": [...], "test": [...]},
      "files": {"a.h5": {"n_chunks": 64, "n_frames": 128, "dtype": "float16",
                         "key": "latents", "has_actions": true}, ...},
      "invalid": [{"file": "bad.h5", "reason": "latents have 8 channels ..."}]
    }
Paths are POSIX paths relative to the data directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lam.data.h5 import FileInfo, LatentShape, find_h5_files, inspect_files
from lam.errors import DataError, UserError

SPLITS = ("train", "val", "test")
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    data_dir: Path
    splits: dict[str, list[str]]
    files: dict[str, dict]
    seed: int | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    dataset_key: str = "latents"
    latent_shape: LatentShape = LatentShape()
    invalid: list[dict] = field(default_factory=list)
    path: Path | None = None

    def split_files(self, split: str) -> list[str]:
        if split not in self.splits:
            raise UserError(f"{self.path or 'manifest'}: unknown split '{split}' (has {sorted(self.splits)})")
        return self.splits[split]

    def to_json(self) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seed": self.seed,
            "ratios": self.ratios,
            "dataset_key": self.dataset_key,
            "latent_shape": dataclasses.asdict(self.latent_shape),
            "splits": self.splits,
            "files": self.files,
            "invalid": self.invalid,
        }


# -----------------------------------------------------------------------------
# Splitting


def check_ratios(train: float, val: float, test: float) -> None:
    ratios = {"train_ratio": train, "val_ratio": val, "test_ratio": test}
    for name, r in ratios.items():
        if not math.isfinite(r) or r < 0:
            raise UserError(f"--{name} must be a number >= 0, got {r}")
    if abs(train + val + test - 1.0) > 1e-6:
        raise UserError(f"split ratios must sum to 1, got train {train} + val {val} + test {test} = {train + val + test:g}")


def split_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Largest-remainder rounding of `ratios * n`, with train >= 1 whenever n >= 1."""
    exact = [r * n for r in ratios]
    counts = [math.floor(x + 1e-9) for x in exact]
    leftover = n - sum(counts)
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:leftover]:
        counts[i] += 1
    if n >= 1 and counts[0] == 0:
        donor = 1 if counts[1] >= counts[2] else 2
        counts[donor] -= 1
        counts[0] += 1
    return counts[0], counts[1], counts[2]


def split_files(files: list[str], ratios: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Deterministic, disjoint, covering split of `files` (any order in, sorted lists out)."""
    ordered = sorted(set(files))
    random.Random(seed).shuffle(ordered)
    n_train, n_val, _ = split_counts(len(ordered), ratios)
    parts = {
        "train": ordered[:n_train],
        "val": ordered[n_train : n_train + n_val],
        "test": ordered[n_train + n_val :],
    }
    return {name: sorted(part) for name, part in parts.items()}


# -----------------------------------------------------------------------------
# Creating


def create_manifest(
    data_dir: str | os.PathLike,
    train_ratio: float = 0.8,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 42,
    dataset_key: str = "latents",
    latent_shape: LatentShape = LatentShape(),
    on_file: Callable[[FileInfo], None] | None = None,
    values: str = "sample",
    jobs: int = 0,
) -> Manifest:
    """Validate every H5 file under `data_dir` and split the valid ones. `values`: which chunks
    are read for NaN/Inf and readability, "sample" (a few per file) or "all". `jobs`: processes
    that check files side by side (`inspect_files`; 0: one per CPU, up to 8)."""
    check_ratios(train_ratio, val_ratio, test_ratio)
    data_dir = Path(data_dir)
    rel_paths = find_h5_files(data_dir)
    if not rel_paths:
        raise DataError(data_dir, "contains no .h5/.hdf5 files (searched recursively)")

    files: dict[str, dict] = {}
    invalid: list[dict] = []
    infos = inspect_files([data_dir / rel for rel in rel_paths], latent_shape, dataset_key, values=values, jobs=jobs)
    for rel, info in zip(rel_paths, infos):
        if on_file is not None:
            on_file(info)
        if info.ok:
            files[rel] = {"n_chunks": info.n_chunks, "n_frames": info.n_frames, "dtype": info.dtype, "key": info.key, "has_actions": info.has_actions}
        else:
            invalid.append({"file": rel, "reason": info.error})
    if not files:
        raise DataError(data_dir, f"none of its {len(rel_paths)} H5 files is valid; first problem: {invalid[0]['file']}: {invalid[0]['reason']}")

    ratios = (train_ratio, val_ratio, test_ratio)
    splits = split_files(list(files), ratios, seed)
    for name, ratio in (("val", val_ratio), ("test", test_ratio)):
        if ratio > 0 and not splits[name]:
            warnings.warn(f"the {name} split is empty ({len(files)} valid files at ratios {ratios}); add files or raise --{name}_ratio", stacklevel=2)
    return Manifest(
        data_dir=data_dir,
        splits=splits,
        files=files,
        seed=seed,
        ratios=dict(zip(SPLITS, ratios)),
        dataset_key=dataset_key,
        latent_shape=latent_shape,
        invalid=invalid,
    )


def write_manifest(manifest: Manifest, out: str | os.PathLike) -> Path:
    """Write atomically: a crash never leaves a half-written manifest."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    os.replace(tmp, out)
    manifest.path = out
    return out


# -----------------------------------------------------------------------------
# Loading


def load_manifest(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Manifest:
    """Read and check a manifest. `data_dir` defaults to the manifest's folder.

    Refused with a UserError naming the manifest: unreadable JSON, missing keys,
    a path that escapes the data directory, a file that does not exist, a file
    in two splits.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: manifest does not exist; create it with `lam manifest DATA_DIR`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: manifest is not readable JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("splits"), dict):
        raise UserError(f"{path}: manifest has no 'splits' object; is this a manifest written by `lam manifest`?")

    data_dir = Path(data_dir) if data_dir is not None else path.parent
    root = data_dir.resolve()
    splits: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, entries in raw["splits"].items():
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise UserError(f"{path}: split '{name}' must be a list of file paths")
        for rel in entries:
            if rel in seen:
                raise UserError(f"{path}: file '{rel}' is in both the '{seen[rel]}' and '{name}' splits; splits must be disjoint")
            seen[rel] = name
            full = (root / rel).resolve()
            if Path(rel).is_absolute() or not full.is_relative_to(root):
                raise UserError(f"{path}: path '{rel}' in split '{name}' escapes the data directory {root}")
            if not full.is_file():
                raise UserError(f"{path}: file '{rel}' in split '{name}' does not exist under {root}")
        splits[name] = list(entries)
    for name in SPLITS:
        splits.setdefault(name, [])

    files = raw.get("files") or {}
    shape = raw.get("latent_shape") or {}
    return Manifest(
        data_dir=data_dir,
        splits=splits,
        files=files if isinstance(files, dict) else {},
        seed=raw.get("seed"),
        ratios=raw.get("ratios") or {},
        dataset_key=raw.get("dataset_key", "latents"),
        latent_shape=LatentShape(**shape) if shape else LatentShape(),
        invalid=raw.get("invalid") or [],
        path=path,
    )
