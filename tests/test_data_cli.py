"""The data commands as a user runs them: real processes, exit codes, no tracebacks."""

import json
import subprocess
import sys

from helpers import write_h5


def lam(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lam", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_validate_mixed_folder_prints_table_and_exits_2(tmp_path):
    write_h5(tmp_path / "good.h5", n_chunks=2)
    write_h5(tmp_path / "nested" / "wrong.h5", shape_tail=(16, 2, 32, 32))
    (tmp_path / "junk.h5").write_bytes(b"nope")
    r = lam("validate", tmp_path)
    assert r.returncode == 2, r.stderr
    out = r.stdout
    assert "good.h5" in out and "16x2x64x64" in out and "OK" in out
    assert "nested/wrong.h5" in out and "expected 64x64" in out
    assert "junk.h5" in out and "cannot be opened as HDF5" in out
    assert "1 of 3 files OK" in out
    assert "Traceback" not in r.stderr


def test_validate_good_folder_and_manifest_exit_0(tmp_path):
    for i in range(3):
        write_h5(tmp_path / f"v{i}.h5", n_chunks=2, seed=i)
    assert lam("validate", tmp_path, "--full").returncode == 0
    r = lam("manifest", tmp_path, "--train-ratio", "0.34", "--val-ratio", "0.33", "--test-ratio", "0.33", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "3 valid files (train 1, val 1, test 1)" in r.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 3
    r = lam("validate", tmp_path / "manifest.json")
    assert r.returncode == 0 and "3 of 3 files OK" in r.stdout


def test_user_errors_exit_2_with_one_clear_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = lam("manifest", empty)
    assert r.returncode == 2 and "contains no .h5" in r.stderr and "Traceback" not in r.stderr
    r = lam("manifest", empty, "--train_ratio", "0.9", "--val_ratio", "0.2", "--test_ratio", "0.1")
    assert r.returncode == 2 and "must sum to 1" in r.stderr
    bad_manifest = tmp_path / "m.json"
    bad_manifest.write_text("[1, 2")
    r = lam("validate", bad_manifest)
    assert r.returncode == 2 and "m.json: manifest is not readable JSON" in r.stderr and "Traceback" not in r.stderr


def test_every_command_has_help_with_examples():
    for cmd in ["synth", "manifest", "validate"]:
        r = lam(cmd, "--help")
        assert r.returncode == 0 and "examples:" in r.stdout
