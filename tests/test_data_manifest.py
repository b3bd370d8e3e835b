import json
import random

import numpy as np
import pytest

from lam.data.h5 import find_h5_files
from lam.data.manifest import check_ratios, create_manifest, load_manifest, split_counts, split_files, write_manifest
from lam.errors import DataError, UserError
from helpers import write_h5


@pytest.mark.parametrize("order_seed", range(5))
def test_split_is_deterministic_whatever_the_listing_order(order_seed):
    files = [f"dir{i % 3}/video_{i:03d}.h5" for i in range(37)]
    reference = split_files(files, (0.8, 0.1, 0.1), seed=42)
    shuffled = files[:]
    random.Random(order_seed).shuffle(shuffled)
    assert split_files(shuffled, (0.8, 0.1, 0.1), seed=42) == reference


def test_split_is_disjoint_covering_and_seed_dependent():
    files = [f"v{i}.h5" for i in range(50)]
    a = split_files(files, (0.8, 0.1, 0.1), seed=1)
    b = split_files(files, (0.8, 0.1, 0.1), seed=2)
    assert sorted(sum(a.values(), [])) == sorted(files)
    assert not set(a["train"]) & set(a["val"]) and not set(a["train"]) & set(a["test"]) and not set(a["val"]) & set(a["test"])
    assert a != b


@pytest.mark.parametrize(
    "n, ratios, expected",
    [
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (16, (0.8, 0.1, 0.1), (13, 2, 1)),  # 12.8, 1.6, 1.6 -> floors 12,1,1; the 2 left go to train then val (tie order)
        (3, (0.8, 0.1, 0.1), (3, 0, 0)),
        (1, (0.0, 0.5, 0.5), (1, 0, 0)),  # train always gets one file
        (7, (1 / 3, 1 / 3, 1 / 3), (3, 2, 2)),
        (0, (0.8, 0.1, 0.1), (0, 0, 0)),
    ],
)
def test_split_counts_largest_remainder(n, ratios, expected):
    counts = split_counts(n, ratios)
    assert counts == expected
    assert sum(counts) == n


@pytest.mark.parametrize("ratios", [(-0.1, 0.6, 0.5), (0.8, 0.1, 0.2), (0.5, 0.1, 0.1), (float("nan"), 0.5, 0.5)])
def test_bad_ratios_are_refused(ratios):
    with pytest.raises(UserError, match="ratio"):
        check_ratios(*ratios)


def test_manifest_recurses_keeps_relative_paths_and_lists_invalid_files(tmp_path):
    for i in range(6):
        write_h5(tmp_path / f"sub{i % 2}" / f"v{i}.h5", n_chunks=2, seed=i)
    write_h5(tmp_path / "bad_channels.h5", shape_tail=(8, 2, 64, 64))
    (tmp_path / "not_h5.h5").write_bytes(b"hello, not hdf5")
    m = create_manifest(tmp_path, 0.5, 0.25, 0.25, seed=0)
    out = write_manifest(m, tmp_path / "manifest.json")
    raw = json.loads(out.read_text())
    listed = sorted(sum(raw["splits"].values(), []))
    assert listed == sorted(f"sub{i % 2}/v{i}.h5" for i in range(6))
    assert {b["file"] for b in raw["invalid"]} == {"bad_channels.h5", "not_h5.h5"}
    assert "8 channels" in next(b["reason"] for b in raw["invalid"] if b["file"] == "bad_channels.h5")
    assert raw["files"]["sub0/v0.h5"] == {"n_chunks": 2, "n_frames": 4, "dtype": "float16", "key": "latents", "has_actions": False}
    assert raw["seed"] == 0 and raw["ratios"] == {"train": 0.5, "val": 0.25, "test": 0.25}
    loaded = load_manifest(out)
    assert loaded.splits == raw["splits"]


def test_few_files_warns_about_empty_splits(tmp_path):
    write_h5(tmp_path / "only.h5", n_chunks=2)
    with pytest.warns(UserWarning, match="val split is empty"):
        m = create_manifest(tmp_path)
    assert m.splits["train"] == ["only.h5"]


def test_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="contains no .h5"):
        create_manifest(tmp_path)


def test_directory_with_only_bad_files_names_the_problem(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="x.h5: cannot be opened as HDF5"):
        create_manifest(tmp_path)


def _manifest_with(tmp_path, splits):
    write_h5(tmp_path / "a.h5", n_chunks=2)
    write_h5(tmp_path / "b.h5", n_chunks=2)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"version": 1, "splits": splits}))
    return path


def test_unreadable_manifest(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match=r"manifest.json: manifest is not readable JSON"):
        load_manifest(path)
    with pytest.raises(UserError, match="does not exist"):
        load_manifest(tmp_path / "missing.json")


def test_manifest_naming_a_missing_file(tmp_path):
    path = _manifest_with(tmp_path, {"train": ["a.h5", "gone.h5"], "val": [], "test": []})
    with pytest.raises(UserError, match="'gone.h5' in split 'train' does not exist"):
        load_manifest(path)


def test_manifest_with_overlapping_splits(tmp_path):
    path = _manifest_with(tmp_path, {"train": ["a.h5", "b.h5"], "val": ["b.h5"], "test": []})
    with pytest.raises(UserError, match="'b.h5' is in both the 'train' and 'val' splits"):
        load_manifest(path)


@pytest.mark.parametrize("bad", ["../outside.h5", "/etc/passwd"])
def test_manifest_path_escaping_the_data_dir(tmp_path, bad):
    data = tmp_path / "data"
    write_h5(tmp_path / "outside.h5", n_chunks=2)
    path = _manifest_with(data, {"train": ["a.h5", bad], "val": [], "test": []})
    with pytest.raises(UserError, match="escapes the data directory"):
        load_manifest(path)


def test_find_h5_files_is_sorted_and_recursive(tmp_path):
    for name in ["z.h5", "a/b.hdf5", "a/c.txt", "m.h5"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    assert find_h5_files(tmp_path) == ["a/b.hdf5", "m.h5", "z.h5"]


def test_files_checked_in_parallel_give_the_manifest_and_table_of_one_process(tmp_path, capsys):
    """Enough files for a process pool: the manifest and `lam validate`'s table are those that
    one process gives, bad files and their reasons included, in the same order."""
    from lam.commands import main
    from lam.data.h5 import PARALLEL_MIN_FILES

    n = PARALLEL_MIN_FILES + 4
    for i in range(n):
        write_h5(tmp_path / f"part{i % 3}" / f"v{i:03d}.h5", n_chunks=1 + i % 3, seed=i)
    nan = np.zeros((2, 16, 2, 64, 64), np.float16)
    nan[1, 0, 0, 0, 0] = np.nan
    write_h5(tmp_path / "part1" / "nan.h5", values=nan)
    (tmp_path / "part2" / "not_h5.h5").write_bytes(b"hello, not hdf5")
    one, two = (create_manifest(tmp_path, 0.8, 0.1, 0.1, seed=0, jobs=jobs) for jobs in (1, 2))
    assert (one.files, one.splits, one.invalid) == (two.files, two.splits, two.invalid)
    assert len(one.files) == n and {b["file"] for b in one.invalid} == {"part1/nan.h5", "part2/not_h5.h5"}
    tables = []
    for jobs in ("1", "2"):
        assert main(["validate", str(tmp_path), "--jobs", jobs]) == 2  # two bad files
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1] and "NaN" in tables[0]
    assert main(["validate", str(tmp_path), "--jobs", "-1"]) == 2
    assert "--jobs must be >= 0" in capsys.readouterr().err
