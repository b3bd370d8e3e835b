"""Opening and checking VVAE latent files.

A file holds one video: a 5-D dataset `[N_chunks, C=16, T_latent=2, H=64, W=64]`
(key `latents` by default; when that key is absent and the file has exactly one
5-D dataset, that one is used). Everything here turns h5py's many failure modes
(not HDF5, truncated, wrong rank, ...) into a `DataError` that names the file.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from lam.errors import DataError

H5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class LatentShape:
    """The per-chunk shape every file must have: `[C, T_latent, H, W]`."""

    channels: int = 16
    t_latent: int = 2
    height: int = 64
    width: int = 64

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.channels, self.t_latent, self.height, self.width)


@dataclass
class FileInfo:
    """What `inspect_file` learned about one file. `error` is None when the file is usable."""

    path: str
    key: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    n_chunks: int = 0
    n_frames: int = 0  # latent frames on the file's timeline: n_chunks * t_latent
    nan_count: int = 0
    inf_count: int = 0
    values_checked: str = "none"  # "none", "sample" or "all"
    error: str | None = None
    has_actions: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def find_h5_files(data_dir: str | os.PathLike) -> list[str]:
    """All H5 files under `data_dir` (recursively), as sorted POSIX paths relative to it."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(root, "is not a directory")
    found = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in H5_SUFFIXES and p.is_file()]
    return sorted(found)


def open_h5(path: str | os.PathLike) -> h5py.File:
    """Open read-only, turning 'not HDF5' and 'truncated' into a DataError naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        # h5py says e.g. "file signature not found" (not HDF5) or "truncated file".
        raise DataError(path, f"cannot be opened as HDF5 ({_short(e)})") from None


def resolve_key(f: h5py.File, key: str = "latents") -> str:
    """The name of the latent dataset: `key` if present, else the file's only 5-D dataset."""
    if key in f:
        if not isinstance(f[key], h5py.Dataset):
            raise DataError(f.filename, f"'{key}' is a group, not a dataset")
        return key
    five_d: list[str] = []
    f.visititems(lambda name, obj: five_d.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim == 5 else None)
    if len(five_d) == 1:
        return five_d[0]
    if not five_d:
        names = []
        f.visititems(lambda name, obj: names.append(f"{name}{list(obj.shape)}") if isinstance(obj, h5py.Dataset) else None)
        raise DataError(f.filename, f"no dataset '{key}' and no 5-D dataset to use instead (datasets: {names or 'none'})")
    raise DataError(f.filename, f"no dataset '{key}' and several 5-D datasets {five_d}; pass the key to use")


def check_shape(path: str | os.PathLike, shape: tuple[int, ...], expected: LatentShape) -> None:
    """Raise a DataError saying exactly which dimension is wrong."""
    if len(shape) != 5:
        raise DataError(path, f"latents have rank {len(shape)} (shape {list(shape)}); expected 5-D [N_chunks, C, T_latent, H, W]")
    _, c, t, h, w = shape
    if c != expected.channels:
        raise DataError(path, f"latents have {c} channels (shape {list(shape)}); expected {expected.channels}")
    if t != expected.t_latent:
        raise DataError(path, f"latents have T_latent={t} (shape {list(shape)}); expected {expected.t_latent}")
    if (h, w) != (expected.height, expected.width):
        raise DataError(path, f"latents are {h}x{w} (shape {list(shape)}); expected {expected.height}x{expected.width}")
    if shape[0] == 0:
        raise DataError(path, "latents have 0 chunks")


def inspect_file(
    path: str | os.PathLike,
    expected: LatentShape = LatentShape(),
    key: str = "latents",
    values: str = "sample",
    sample_chunks: int = 4,
) -> FileInfo:
    """Check one file and describe it; never raises for a bad file (the error goes into `FileInfo.error`).

    values: "none" reads only metadata, "sample" reads the first, middle and last
    chunks (a cheap check that catches NaN-filled and truncated-data files), "all"
    scans every chunk (what `lam validate --full` does).
    """
    info = FileInfo(path=str(path))
    try:
        with open_h5(path) as f:
            info.key = resolve_key(f, key)
            ds = f[info.key]
            info.shape = tuple(int(s) for s in ds.shape)
            info.dtype = str(ds.dtype)
            info.has_actions = "actions" in f
            if ds.dtype.kind != "f" and str(ds.dtype) != "bfloat16":
                raise DataError(path, f"latents have dtype {ds.dtype}; expected a float type")
            check_shape(path, info.shape, expected)
            info.n_chunks = info.shape[0]
            info.n_frames = info.n_chunks * info.shape[2]
            if values != "none":
                info.values_checked = values
                first_bad = None
                for rows in _chunk_rows(info.n_chunks, values, sample_chunks):
                    try:
                        block = np.asarray(ds[rows])
                    except (OSError, RuntimeError, ValueError) as e:
                        raise DataError(path, f"data cannot be read at chunks {rows.start}..{rows.stop - 1} ({_short(e)}); the file is probably truncated") from None
                    nan, inf = np.isnan(block), np.isinf(block)
                    if first_bad is None and (nan.any() or inf.any()):
                        first_bad = rows.start + int(np.flatnonzero((nan | inf).reshape(len(block), -1).any(axis=1))[0])
                    info.nan_count += int(nan.sum())
                    info.inf_count += int(inf.sum())
                if info.nan_count or info.inf_count:
                    where = "in the chunks sampled" if values == "sample" else "in all chunks"
                    raise DataError(path, f"latents contain {info.nan_count} NaN and {info.inf_count} Inf values {where} "
                                          f"(first in chunk {first_bad}: latent frames {first_bad * info.shape[2]}..{first_bad * info.shape[2] + info.shape[2] - 1})")
    except DataError as e:
        info.error = e.problem
    return info


# Below this many files a process pool costs more to start (each worker imports h5py and numpy)
# than it saves.
PARALLEL_MIN_FILES = 32


def default_jobs() -> int:
    """Processes for checking files: the CPUs this process may use, at most 8 (reading many
    small files is bound by the disk beyond that)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def inspect_files(paths: list, expected: LatentShape = LatentShape(), key: str = "latents", values: str = "sample",
                  jobs: int = 0) -> Iterator[FileInfo]:
    """`inspect_file` for every path, in order, in `jobs` processes (0: `default_jobs()`; 1, or
    fewer than PARALLEL_MIN_FILES files: in this process). h5py holds one lock per process, so
    threads would not check files side by side. Workers are spawned, not forked: the caller
    may run Ray or other threads. Memory grows with the number of files (one small result
    each), not with their size."""
    jobs = jobs or default_jobs()
    check = functools.partial(inspect_file, expected=expected, key=key, values=values)
    if jobs == 1 or len(paths) < PARALLEL_MIN_FILES:
        yield from map(check, paths)
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(check, paths, chunksize=max(1, min(64, len(paths) // (4 * jobs))))


def _chunk_rows(n_chunks: int, values: str, sample_chunks: int) -> list[slice]:
    if values == "all":
        step = 16  # read 16 chunks (~4 MB in fp16) at a time
        return [slice(i, min(i + step, n_chunks)) for i in range(0, n_chunks, step)]
    picks = sorted({0, n_chunks // 2, n_chunks - 1} | set(np.linspace(0, n_chunks - 1, sample_chunks).astype(int).tolist()))
    return [slice(i, i + 1) for i in picks]


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def true_actions(path: str | os.PathLike) -> np.ndarray | None:
    """A file's ground-truth action per latent frame (its `actions` dataset, flattened `[N, 2]` ->
    `[2N]`), or None when it has none. Read only by evaluation and the opt-in label head."""
    with h5py.File(path, "r") as f:
        if "actions" not in f:
            return None
        return np.asarray(f["actions"][()]).reshape(-1).astype(np.int64)
