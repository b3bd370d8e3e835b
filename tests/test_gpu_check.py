"""The GPU check (`bash bench/perf/gpu_check.sh`) runs end to end in its CPU dry run, so it cannot rot
between GPU loans. Correctness only: no rate is asserted. The check itself runs in this process on
the session's Ray; the shell script that picks its Python is run on its own."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import positive

ROOT = Path(__file__).resolve().parent.parent


def test_the_script_runs_the_check_with_the_projects_python():
    proc = subprocess.run(["bash", "bench/perf/gpu_check.sh", "--cpu-dry-run", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[gpu-check] dry run on CPU with torch" in proc.stdout and "usage: python -m bench.perf.gpu_check" in proc.stdout


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_section_and_writes_the_report(ray_session, tmp_path, capsys):
    from bench.perf.gpu_check import main

    out = tmp_path / "results-gpu.json"
    code = main(["--cpu-dry-run", "--out", str(out), "--workdir", str(tmp_path / "work")])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    assert ray_session.is_initialized()  # the session's Ray, left running
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-dry-run" and report["errors"] == []

    v = report["versions"]
    assert v["device"] == "cpu" and v["torch"] and v["ray"]
    assert positive(v["peak_flops"]["bf16"]) and positive(v["peak_flops"]["fp32"])
    assert set(report["attention"]) == {"flash", "flash_or_memory_efficient"}
    assert all(isinstance(result, str) and result for result in report["attention"].values())  # "ran" or the error

    (row,) = report["train"]["rows"]
    assert row["precision"] == "bf16" and row["compile"] is False
    # On a CPU the MFU has no ceiling of 1: bf16 autocast leaves many ops in fp32, and a CPU without
    # native bf16 emulates the bf16 matmul that the peak is measured with, so training can beat it.
    assert positive(row["samples_per_s"]) and positive(row["mfu"])
    assert 0 <= row["data_wait_fraction"] <= 1
    assert positive(row["checkpoint_stall_s"])  # a checkpoint every epoch: the first one's stall, logged with the second

    ingest = report["ingest"]
    assert positive(ingest["model_windows_per_s"]) and positive(ingest["ray_data_windows_per_s"]) and ingest["read_cpus"] >= 1
    overfit = report["overfit"]
    assert positive(overfit["mse"]) and positive(overfit["mae"]) and positive(overfit["copy_last_mse"])
    from lam.train.launch import OVERFIT_BASELINE_RATIO, OVERFIT_MAE, OVERFIT_MSE

    # PASS is the spec's rule on the numbers the report gives, not a flag on its own
    assert overfit["passed"] is (overfit["mse"] < OVERFIT_MSE and overfit["mae"] < OVERFIT_MAE
                                 and overfit["mse"] < OVERFIT_BASELINE_RATIO * overfit["copy_last_mse"])
    ckpt = report["checkpoint"]
    assert positive(ckpt["size_mb"]) and positive(ckpt["snapshot_s"]) and ckpt["sync_stall_s"] > ckpt["async_stall_s"]

    batch = report["batch"]["rows"]
    assert [r["batch_size"] for r in batch] == [2, 4] and all(positive(r["samples_per_s"]) and 0 < r["mfu"] for r in batch)

    assert "# GPU check (cpu-dry-run)" in stdout and "bf16" in stdout and "bare bf16 loop" in stdout


def test_without_a_gpu_the_real_mode_says_so_and_exits_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here: the real mode would run")
    proc = subprocess.run([sys.executable, "-m", "bench.perf.gpu_check"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "sees no CUDA device" in proc.stderr and "--cpu-dry-run" in proc.stderr
