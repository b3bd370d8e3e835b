import pickle
import re

import h5py
import numpy as np
import pytest

from lam.data.h5 import inspect_file
from lam.data.manifest import create_manifest, write_manifest
from lam.data.windows import WindowReader, all_finite, build_window_index, stores_whole_chunks, window_starts
from lam.errors import DataError, UserError
from helpers import LAYOUTS, write_h5


def naive_window(path, start, T, key="latents"):
    """Reference: build the whole timeline z[2k+j] = latents[k, :, j] frame by frame."""
    with h5py.File(path) as f:
        lat = f[key][()]
    timeline = [lat[k, :, j] for k in range(lat.shape[0]) for j in range(lat.shape[2])]
    return np.stack(timeline[start : start + T]).astype(np.float32)


@pytest.mark.parametrize("T", [2, 3, 8])
def test_windows_equal_a_naive_read(tmp_path, T):
    path = write_h5(tmp_path / "v.h5", n_chunks=7, seed=T)
    reader = WindowReader(tmp_path, sequence_length=T)
    n_frames = 14
    rng = np.random.default_rng(0)
    starts = {0, 1, n_frames - T, n_frames - T - 1 if n_frames - T > 0 else 0} | set(rng.integers(0, n_frames - T + 1, 6).tolist())
    for s in sorted(starts):  # includes odd starts (second latent frame of a chunk) and the last window
        np.testing.assert_array_equal(reader.read("v.h5", s), naive_window(path, s, T))
    batch = reader.read_batch(["v.h5"] * len(starts), sorted(starts))
    assert batch.shape == (len(starts), T, 16, 64, 64) and batch.dtype == np.float32


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_every_storage_layout_reads_the_same_windows(tmp_path, layout, dtype):
    path = write_h5(tmp_path / "v.h5", n_chunks=5, dtype=dtype, seed=1, layout=layout)
    with h5py.File(path) as f:
        assert stores_whole_chunks(f["latents"]) == (layout == "whole_chunks")
    for out_dtype in (np.float32, None):
        reader = WindowReader(tmp_path, sequence_length=3, out_dtype=out_dtype)
        for s in range(0, 8):
            window = reader.read("v.h5", s)
            assert window.dtype == (out_dtype or np.dtype(dtype))
            np.testing.assert_array_equal(window.astype(np.float32), naive_window(path, s, 3))
        reader.close()


def test_float16_finite_check_matches_numpy():
    specials = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, -65504.0, 6e-8, -6e-8, np.inf, -np.inf, np.nan, -np.nan], np.float16)
    for value in specials:
        window = np.full((2, 3), 0.5, np.float16)
        window[1, 2] = value
        assert all_finite(window) == bool(np.isfinite(window).all()), value
    every_bit_pattern = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    expected = np.isfinite(every_bit_pattern)
    assert [all_finite(every_bit_pattern[i : i + 1]) for i in range(0, 2**16, 97)] == list(expected[::97])
    assert all_finite(every_bit_pattern[expected]) and all_finite(np.zeros(0, np.float16))


def test_window_starts_stride_and_short_files():
    np.testing.assert_array_equal(window_starts(16, 8, 8), [0, 8])
    np.testing.assert_array_equal(window_starts(17, 8, 8), [0, 8])
    np.testing.assert_array_equal(window_starts(10, 8, 1), [0, 1, 2])
    assert len(window_starts(6, 8, 1)) == 0


def _manifest(tmp_path, lengths):
    for i, n in enumerate(lengths):
        write_h5(tmp_path / f"v{i}.h5", n_chunks=n, seed=i)
    m = create_manifest(tmp_path, 1.0, 0.0, 0.0, seed=0)
    write_manifest(m, tmp_path / "manifest.json")
    return m


def test_window_index_never_crosses_files_and_skips_short_files(tmp_path):
    m = _manifest(tmp_path, [4, 3, 1])  # 8, 6 and 2 latent frames
    with pytest.warns(UserWarning, match=r"shorter than one window of 4 latent frames: v2.h5 \(2 latent frames\)"):
        idx = build_window_index(m, "train", sequence_length=4, stride=1)
    rows = idx.rows()
    assert {r["file"] for r in rows} == {"v0.h5", "v1.h5"}
    assert sorted(r["start"] for r in rows if r["file"] == "v0.h5") == [0, 1, 2, 3, 4]
    assert sorted(r["start"] for r in rows if r["file"] == "v1.h5") == [0, 1, 2]
    default = build_window_index(m, "train", sequence_length=4)  # stride defaults to T: non-overlapping
    assert sorted((r["file"], r["start"]) for r in default.rows()) == [("v0.h5", 0), ("v0.h5", 4), ("v1.h5", 0)]


def test_split_without_any_window_is_a_clear_error(tmp_path):
    m = _manifest(tmp_path, [1])
    with pytest.warns(UserWarning), pytest.raises(UserError, match="split 'train' .* has no window of 8 latent frames"):
        build_window_index(m, "train", sequence_length=8)


def test_reader_pickles_without_handles_and_reopens(tmp_path):
    write_h5(tmp_path / "v.h5", n_chunks=2)
    reader = WindowReader(tmp_path, sequence_length=2)
    first = reader.read("v.h5", 1)
    assert reader._open  # opened lazily on first read
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._open == {}
    np.testing.assert_array_equal(clone.read("v.h5", 1), first)
    reader.close()
    clone.close()


def test_dataset_key_is_auto_detected_when_it_is_the_only_5d_dataset(tmp_path):
    path = write_h5(tmp_path / "v.h5", n_chunks=2, key="z")
    with h5py.File(path, "a") as f:
        f["meta"] = np.arange(3)
    info = inspect_file(path)
    assert info.ok and info.key == "z"
    assert WindowReader(tmp_path, 2).read("v.h5", 0).shape == (2, 16, 64, 64)


# ---- bad input: each gives one message naming the file and the problem -------


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"just some text"), "cannot be opened as HDF5"),
        (lambda p: (write_h5(p, n_chunks=8), _truncate(p)), r"cannot be opened as HDF5|truncated"),
        (lambda p: write_h5(p, values=np.zeros((2, 16, 64, 64), np.float16)), "rank 4"),
        (lambda p: write_h5(p, shape_tail=(8, 2, 64, 64)), "8 channels"),
        (lambda p: write_h5(p, shape_tail=(16, 2, 32, 32)), "32x32"),
        (lambda p: write_h5(p, shape_tail=(16, 3, 64, 64)), "T_latent=3"),
        (lambda p: write_h5(p, values=np.full((2, 16, 2, 64, 64), np.nan, np.float16)), "NaN"),
        (lambda p: write_h5(p, values=np.full((2, 16, 2, 64, 64), np.inf, np.float32)), "Inf"),
        (lambda p: write_h5(p, values=np.zeros((2, 16, 2, 64, 64), np.int16)), "dtype int16"),
    ],
    ids=["not-hdf5", "truncated", "wrong-rank", "wrong-channels", "wrong-spatial", "wrong-t-latent", "nan", "inf", "int-dtype"],
)
def test_bad_files_are_named_with_their_problem(tmp_path, make, message):
    bad = tmp_path / "bad.h5"
    make(bad)
    info = inspect_file(bad)
    assert not info.ok
    assert re.search(message, info.error), info.error
    # A valid neighbour is not lost because of the bad file.
    write_h5(tmp_path / "good.h5", n_chunks=2)
    m = create_manifest(tmp_path, 1.0, 0.0, 0.0)
    assert m.splits["train"] == ["good.h5"]
    assert m.invalid == [{"file": "bad.h5", "reason": info.error}]


def test_nan_window_at_read_time_names_file_and_frames(tmp_path):
    values = np.zeros((3, 16, 2, 64, 64), np.float32)
    values[2, 5, 1, 10, 10] = np.nan  # frame 5
    write_h5(tmp_path / "v.h5", values=values)
    reader = WindowReader(tmp_path, sequence_length=2)
    reader.read("v.h5", 0)
    with pytest.raises(DataError, match=r"v.h5: window of latent frames 4..5 contains NaN"):
        reader.read("v.h5", 4)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_nan_and_truncation_while_open_are_caught_in_every_layout(tmp_path, layout):
    values = np.zeros((3, 16, 2, 64, 64), np.float16)
    values[2, 5, 1, 10, 10] = np.nan  # frame 5
    write_h5(tmp_path / "nan.h5", values=values, layout=layout)
    reader = WindowReader(tmp_path, sequence_length=2)
    reader.read("nan.h5", 2)
    with pytest.raises(DataError, match=r"nan.h5: window of latent frames 4..5 contains NaN"):
        reader.read("nan.h5", 4)
    path = write_h5(tmp_path / "cut.h5", n_chunks=6, layout=layout)
    reader.read("cut.h5", 0)  # the handle stays open, as in a long run, while the file is cut short
    _truncate(path, keep=0.6)
    with pytest.raises(DataError, match=r"cut.h5: (was truncated while being read|cannot read chunks)"):
        reader.read("cut.h5", 9)


def test_truncated_data_after_a_good_header_is_caught_on_read(tmp_path):
    # Contiguous data at the end of the file: cutting the tail keeps the header readable.
    path = write_h5(tmp_path / "v.h5", n_chunks=6)
    _truncate(path, keep=0.6)
    info = inspect_file(path)
    assert not info.ok and ("truncated" in info.error or "cannot be opened" in info.error)
