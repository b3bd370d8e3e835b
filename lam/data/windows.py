"""Windows of consecutive latent frames, and reading them from H5.

A file's latent timeline is `z[2k + j] = latents[k, :, j]` (length `2 * N_chunks`).
A training sample is a window `z[start : start + T]` of `T = sequence_length`
frames of one file, `[T, 16, 64, 64]`. Windows cross chunk boundaries (a window
may start on the second latent frame of a chunk) and never cross files.

The index of windows is small (two ints per window), so shuffling happens on
the index, never on the tensors.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lam.data.h5 import LatentShape, check_shape, inspect_file, open_h5, resolve_key
from lam.data.manifest import Manifest
from lam.errors import DataError, UserError


@dataclass
class WindowIndex:
    """All windows of a split: window i is `files[file_ids[i]]`, frames `starts[i] : starts[i] + T`."""

    files: list[str]
    file_ids: np.ndarray  # (W,) int32
    starts: np.ndarray  # (W,) int64
    sequence_length: int

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self) -> list[dict]:
        """One `{"file", "start"}` dict per window (the rows of the Ray dataset)."""
        return [{"file": self.files[f], "start": int(s)} for f, s in zip(self.file_ids, self.starts)]


def window_starts(n_frames: int, sequence_length: int, stride: int) -> np.ndarray:
    """Start frames of the windows of one file; empty when the file is shorter than one window."""
    return np.arange(0, n_frames - sequence_length + 1, stride, dtype=np.int64)


def build_window_index(
    manifest: Manifest,
    split: str,
    sequence_length: int,
    stride: int | None = None,
) -> WindowIndex:
    """Index every window of `split`. `stride` defaults to `sequence_length` (non-overlapping).

    Frame counts come from the manifest's per-file metadata; a file without it is
    opened and checked here, so a hand-edited manifest fails at start-up, not hours in.
    """
    if sequence_length < 2:
        raise UserError(f"sequence_length must be >= 2 (one transition), got {sequence_length}")
    stride = sequence_length if stride is None else stride
    if stride < 1:
        raise UserError(f"stride must be >= 1, got {stride}")
    files, file_ids, starts = [], [], []
    too_short = []
    for rel in manifest.split_files(split):
        n_frames = frame_count(manifest, rel)
        s = window_starts(n_frames, sequence_length, stride)
        if len(s) == 0:
            too_short.append(f"{rel} ({n_frames} latent frames)")
            continue
        file_ids.append(np.full(len(s), len(files), dtype=np.int32))
        starts.append(s)
        files.append(rel)
    if too_short:
        warnings.warn(
            f"skipping {len(too_short)} file(s) of split '{split}' shorter than one window of {sequence_length} latent frames: "
            + ", ".join(too_short[:5]) + (" ..." if len(too_short) > 5 else ""),
            stacklevel=2,
        )
    if not files:
        raise UserError(f"split '{split}' of {manifest.path or 'the manifest'} has no window of {sequence_length} latent frames "
                        f"({len(manifest.split_files(split))} files); use more files or a shorter --sequence_length")
    return WindowIndex(files, np.concatenate(file_ids), np.concatenate(starts), sequence_length)


def frame_count(manifest: Manifest, rel: str) -> int:
    meta = manifest.files.get(rel)
    if meta and "n_frames" in meta:
        return int(meta["n_frames"])
    info = inspect_file(Path(manifest.data_dir) / rel, manifest.latent_shape, manifest.dataset_key, values="none")
    if not info.ok:
        raise DataError(Path(manifest.data_dir) / rel, info.error)
    manifest.files[rel] = {"n_chunks": info.n_chunks, "n_frames": info.n_frames, "dtype": info.dtype, "key": info.key}
    return info.n_frames


def all_finite(a: np.ndarray) -> bool:
    """`np.isfinite(a).all()`, fast for float16 too.

    numpy has no vectorised float16 math: `np.isfinite` on a float16 window costs
    many times a copy of it (bench/README.md). A float16 is
    NaN or Inf exactly when its 5 exponent bits are all ones: as int16 that is
    0x7C00..0x7FFF (sign bit clear), as uint16 0xFC00..0xFFFF (sign bit set), the
    top of each range. So two integer maxima decide it, at memory speed and
    without a temporary array.
    """
    if a.size == 0:
        return True
    if a.dtype == np.float16:
        return int(a.view(np.int16).max()) < 0x7C00 and int(a.view(np.uint16).max()) < 0xFC00
    if a.dtype.kind != "f":
        return True  # integers are always finite
    return bool(np.isfinite(a).all())


def stores_whole_chunks(ds: h5py.Dataset) -> bool:
    """True when each HDF5 chunk of `ds` is one latent chunk `[1, C, t, H, W]`, stored
    unfiltered in native byte order: then a chunk's raw bytes are its array, and
    `WindowReader` reads them with `read_direct_chunk`, skipping HDF5's selection
    and conversion machinery (faster than `ds[a:b]`: bench/README.md).
    Any other layout (contiguous, compressed, ...) takes the general path.
    """
    return (
        ds.chunks == (1, *ds.shape[1:])
        and ds.dtype.kind == "f"
        and ds.dtype.isnative
        and ds.id.get_create_plist().get_nfilters() == 0
    )


@dataclass
class _OpenFile:
    """One file a `WindowReader` has open, and what it learned when opening it."""

    file: h5py.File
    dataset: h5py.Dataset
    whole_chunks: bool  # `stores_whole_chunks(dataset)`: read raw chunks
    fd: int  # the file's descriptor, to notice truncation while open
    size: int  # bytes when opened


class WindowReader:
    """Reads windows from H5 files, keeping one open handle per file per process.

    Handles are opened lazily on first use and are never pickled, so a reader can
    be shipped to Ray tasks or DataLoader workers and each process opens its own.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        sequence_length: int,
        dataset_key: str = "latents",
        latent_shape: LatentShape = LatentShape(),
        out_dtype: str | np.dtype | None = np.float32,
        check_finite: bool = True,
    ):
        self.data_dir = Path(data_dir)
        self.sequence_length = sequence_length
        self.dataset_key = dataset_key
        self.latent_shape = latent_shape
        self.out_dtype = None if out_dtype is None else np.dtype(out_dtype)  # None: the stored dtype
        self.check_finite = check_finite
        self._open: dict[str, _OpenFile] = {}

    # Handles stay in the process that opened them.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def close(self) -> None:
        for opened in self._open.values():
            opened.file.close()
        self._open.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _file(self, rel: str) -> _OpenFile:
        opened = self._open.get(rel)
        if opened is None:
            f = open_h5(self.data_dir / rel)
            ds = f[resolve_key(f, self.dataset_key)]
            check_shape(self.data_dir / rel, ds.shape, self.latent_shape)
            fd = f.id.get_vfd_handle()
            opened = self._open[rel] = _OpenFile(f, ds, stores_whole_chunks(ds), fd, os.fstat(fd).st_size)
        return opened

    def dataset(self, rel: str) -> h5py.Dataset:
        return self._file(rel).dataset

    def _check_not_truncated(self, rel: str, opened: _OpenFile) -> None:
        """HDF5 reads the missing tail of a file cut short while open as zeros, without an
        error; one fstat per window (~1 us) turns that into a DataError instead."""
        now = os.fstat(opened.fd).st_size
        if now < opened.size:
            raise DataError(self.data_dir / rel, f"was truncated while being read ({opened.size} -> {now} bytes)")

    def read(self, rel: str, start: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames `start : start + T` of file `rel` as `[T, C, H, W]` in `out_dtype`."""
        T = self.sequence_length
        opened = self._file(rel)
        ds = opened.dataset
        t_latent = ds.shape[2]
        n_frames = ds.shape[0] * t_latent
        if start < 0 or start + T > n_frames:
            raise DataError(self.data_dir / rel, f"window {start}..{start + T - 1} is outside its {n_frames} latent frames")
        first_chunk, last_chunk = start // t_latent, (start + T - 1) // t_latent
        if out is None:
            out = np.empty((T, ds.shape[1], ds.shape[3], ds.shape[4]), dtype=self.out_dtype or ds.dtype)
        try:
            if opened.whole_chunks:
                chunks = [self._raw_chunk(rel, ds, k) for k in range(first_chunk, last_chunk + 1)]
            else:
                block = ds[first_chunk : last_chunk + 1]  # (n, C, t_latent, H, W), stored dtype
                chunks = list(block)
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(self.data_dir / rel, f"cannot read chunks {first_chunk}..{last_chunk} ({e}); the file is probably truncated") from None
        # The file's timeline is z[2k + j] = chunk k [:, j]: copy each frame of the window
        # straight from its chunk into `out`, converting the stored dtype on the way. One
        # copy per frame; transposing the whole block first would copy everything twice.
        offset = start - first_chunk * t_latent
        for i in range(T):
            k, j = divmod(offset + i, t_latent)
            np.copyto(out[i], chunks[k][:, j], casting="unsafe")
        self._check_not_truncated(rel, opened)
        if self.check_finite and not all_finite(out):
            raise DataError(self.data_dir / rel, f"window of latent frames {start}..{start + T - 1} contains NaN or Inf values")
        return out

    def _raw_chunk(self, rel: str, ds: h5py.Dataset, k: int) -> np.ndarray:
        """Latent chunk `k` of a `stores_whole_chunks` dataset as `[C, t, H, W]`, from its raw bytes."""
        _, raw = ds.id.read_direct_chunk((k, 0, 0, 0, 0))
        chunk_shape = ds.shape[1:]
        if len(raw) != ds.dtype.itemsize * int(np.prod(chunk_shape)):
            raise DataError(self.data_dir / rel, f"chunk {k} holds {len(raw)} bytes, not a {chunk_shape} {ds.dtype} array; the file is probably truncated")
        return np.frombuffer(raw, dtype=ds.dtype).reshape(chunk_shape)

    def read_batch(self, files, starts, on_error=None) -> np.ndarray:
        """Windows for parallel sequences of file paths and start frames, `[B, T, C, H, W]`.

        A window that cannot be used (NaN/Inf values, unreadable chunks) raises its DataError;
        with `on_error`, `on_error(i, file, start, error)` is called instead and the window is
        left out of the batch (which then has fewer rows)."""
        shape = self.latent_shape
        dtype = self.out_dtype or (self.dataset(str(files[0])).dtype if len(files) else np.float32)
        batch = np.empty((len(starts), self.sequence_length, shape.channels, shape.height, shape.width), dtype=dtype)
        bad = []
        for i, (rel, start) in enumerate(zip(files, starts)):
            try:
                self.read(str(rel), int(start), out=batch[i])
            except DataError as e:
                if on_error is None:
                    raise
                on_error(i, str(rel), int(start), e)
                bad.append(i)
        return np.delete(batch, bad, axis=0) if bad else batch
