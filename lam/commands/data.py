"""`lam synth`, `lam manifest` and `lam validate`."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from lam.commands.flags import add_flag
from lam.data.h5 import PARALLEL_MIN_FILES, FileInfo, LatentShape, find_h5_files, inspect_files
from lam.data.manifest import create_manifest, load_manifest, write_manifest
from lam.errors import DataError, UserError

RAW = argparse.RawDescriptionHelpFormatter


def register(sub) -> None:
    # -- synth ---------------------------------------------------------------
    p = sub.add_parser(
        "synth",
        help="write a synthetic VVAE-shaped dataset with ground-truth actions",
        formatter_class=RAW,
        description="Write VVAE-shaped H5 files (latents float16 [N,16,2,64,64] + actions int [N,2]) from a\n"
        "small procedural world: an agent moved by discrete actions, a textured background, a distractor\n"
        "that moves on its own, and noise.",
        epilog="examples:\n  lam synth demo_data --files 16 --chunks 64 --seed 0\n  lam synth /tmp/tiny --files 4 --chunks 8",
    )
    p.add_argument("out_dir", help="folder to write video_0000.h5, ... into (created if missing)")
    p.add_argument("--files", type=int, default=16, help="number of files (videos), default 16")
    p.add_argument("--chunks", type=int, default=64, help="chunks per file (1 chunk = 2 latent frames), default 64")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; file i uses a seed derived from it (default 0)")
    add_flag(p, "vary_length", action="store_true", help="give files different lengths (chunks/2 .. chunks)")
    add_flag(p, "num_actions", type=int, default=5, help="5 = stay + 4 moves; up to 9 adds diagonals")
    p.set_defaults(func=run_synth)

    # -- manifest ------------------------------------------------------------
    p = sub.add_parser(
        "manifest",
        help="validate a data folder and split its files into train/val/test",
        formatter_class=RAW,
        description="Validate every H5 file under DATA_DIR (recursively) and write a manifest that splits the\n"
        "valid ones by file into train/val/test. Invalid files are listed with their reason.\n"
        "Split sizes use largest-remainder rounding; train always gets at least one file.",
        epilog="examples:\n  lam manifest demo_data\n"
        "  lam manifest /data/output_h5 --train_ratio 0.8 --val_ratio 0.1 --test_ratio 0.1 --seed 42\n"
        "  lam manifest /data/output_h5 --out /data/splits/manifest.json --dataset_key z\n"
        "  lam manifest /data/output_h5 --full_check    # read every chunk: no bad window can surprise a long run",
    )
    p.add_argument("data_dir", help="folder of H5 latent files (searched recursively)")
    add_flag(p, "train_ratio", type=float, default=0.8, help="fraction of files for training (default 0.8)")
    add_flag(p, "val_ratio", type=float, default=0.1, help="fraction of files for validation (default 0.1)")
    add_flag(p, "test_ratio", type=float, default=0.1, help="fraction of files for testing (default 0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split; the same seed gives the same split (default 42)")
    p.add_argument("--out", help="manifest path (default DATA_DIR/manifest.json)")
    add_flag(p, "full_check", action="store_true",
             help="scan every chunk of every file for NaN/Inf and unreadable data (default: a sample of chunks per file)")
    _add_jobs_flag(p)
    _add_shape_flags(p)
    p.set_defaults(func=run_manifest)

    # -- validate ------------------------------------------------------------
    p = sub.add_parser(
        "validate",
        help="check H5 files: shape, dtype, length, NaN/Inf",
        formatter_class=RAW,
        description="Print a table of files (shape, dtype, chunks, latent frames, NaN/Inf counts, error).\n"
        "Exit code 0 when every file is good, 2 otherwise.",
        epilog="examples:\n  lam validate demo_data\n  lam validate demo_data/manifest.json\n  lam validate /data/output_h5 --full",
    )
    p.add_argument("path", help="a data folder, or a manifest.json (checks the files it lists)")
    p.add_argument("--full", action="store_true", help="scan every value for NaN/Inf (default: a sample of chunks)")
    _add_jobs_flag(p)
    _add_shape_flags(p)
    p.set_defaults(func=run_validate)


def _add_jobs_flag(p) -> None:
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help=f"processes that check files side by side (default 0: one per CPU, up to 8; 1: this process only; "
                        f"under {PARALLEL_MIN_FILES} files always this process)")


def _jobs(args) -> int:
    if args.jobs < 0:
        raise UserError(f"--jobs must be >= 0 (0: one per CPU), got {args.jobs}")
    return args.jobs


def _add_shape_flags(p) -> None:
    add_flag(p, "dataset_key", default="latents", help="H5 dataset name (default latents; the only 5-D dataset is used if absent)")
    add_flag(p, "channels", type=int, default=16, help="latent channels every file must have (default 16)")
    add_flag(p, "t_latent", type=int, default=2, help="latent frames per chunk (default 2)")
    add_flag(p, "height", type=int, default=64, help="latent height (default 64)")
    add_flag(p, "width", type=int, default=64, help="latent width (default 64)")


def _shape(args) -> LatentShape:
    return LatentShape(args.channels, args.t_latent, args.height, args.width)


def run_synth(args) -> int:
    from lam.data.synth import write_synthetic_dataset

    if args.files < 1 or args.chunks < 1:
        raise UserError("--files and --chunks must be >= 1")
    paths = write_synthetic_dataset(args.out_dir, files=args.files, chunks=args.chunks, seed=args.seed, vary_length=args.vary_length, num_actions=args.num_actions, progress=True)
    print(f"wrote {len(paths)} files to {args.out_dir}")
    return 0


def run_manifest(args) -> int:
    data_dir = Path(args.data_dir)
    n_files = len(find_h5_files(data_dir))
    bar = tqdm(total=n_files, desc="validating", unit="file", file=sys.stderr, disable=n_files < 20 and not args.full_check)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = create_manifest(
            data_dir, args.train_ratio, args.val_ratio, args.test_ratio, args.seed,
            dataset_key=args.dataset_key, latent_shape=_shape(args), on_file=lambda _: bar.update(),
            values="all" if args.full_check else "sample", jobs=_jobs(args),
        )
    bar.close()
    out = write_manifest(manifest, args.out or data_dir / "manifest.json")
    counts = ", ".join(f"{name} {len(files)}" for name, files in manifest.splits.items())
    print(f"wrote {out}: {len(manifest.files)} valid files ({counts}), seed {args.seed}")
    for bad in manifest.invalid:
        print(f"  invalid, left out: {bad['file']}: {bad['reason']}")
    for w in caught:
        print(f"  warning: {w.message}", file=sys.stderr)
    return 0


def run_validate(args) -> int:
    target = Path(args.path)
    if target.is_file() and target.suffix == ".json":
        manifest = load_manifest(target)
        root = Path(manifest.data_dir)
        rels = [rel for files in manifest.splits.values() for rel in files]
        key, shape = manifest.dataset_key, manifest.latent_shape
    elif target.is_dir():
        root, rels = target, find_h5_files(target)
        key, shape = args.dataset_key, _shape(args)
        if not rels:
            raise DataError(target, "contains no .h5/.hdf5 files (searched recursively)")
    else:
        raise UserError(f"{target}: not a data folder or a manifest .json")

    infos: list[FileInfo] = []
    checked = inspect_files([root / rel for rel in rels], shape, key, values="all" if args.full else "sample", jobs=_jobs(args))
    for rel, info in zip(rels, tqdm(checked, total=len(rels), desc="validating", unit="file", file=sys.stderr, disable=len(rels) < 20)):
        info.path = rel
        infos.append(info)
    print_table(infos)
    bad = [i for i in infos if not i.ok]
    checked = "all values" if args.full else "a sample of chunks"
    print(f"\n{len(infos) - len(bad)} of {len(infos)} files OK (NaN/Inf checked on {checked})")
    return 2 if bad else 0


def print_table(infos: list[FileInfo]) -> None:
    header = ("file", "shape", "dtype", "chunks", "frames", "NaN", "Inf", "status")
    rows = [
        (
            i.path,
            "x".join(map(str, i.shape)) if i.shape else "-",
            i.dtype or "-",
            str(i.n_chunks) if i.ok else "-",
            str(i.n_frames) if i.ok else "-",
            str(i.nan_count),
            str(i.inf_count),
            "OK" if i.ok else f"ERROR: {i.error}",
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header) - 1)]
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
