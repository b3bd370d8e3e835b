"""The benchmark suite runs end to end in its quickest mode and writes a well-formed report.

Correctness only: no timing is asserted (rates on a shared CI machine mean little). The suite
runs in this process on the session's Ray (it leaves a Ray it did not start running).
"""

import json

import pytest

from helpers import positive


@pytest.mark.slow
def test_quick_suite_writes_a_sane_report(ray_session, tmp_path, capsys):
    import torch

    from bench.perf.run import main

    threads = torch.get_num_threads()
    out = tmp_path / "results.json"
    code = main(["--quick", "--threads", "1", "--out", str(out), "--workdir", str(tmp_path / "work")])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "## ingest" in stdout and "## training step" in stdout and "## MFU" in stdout
    assert ray_session.is_initialized() and torch.get_num_threads() == threads  # the session's Ray and threads as they were
    report = json.loads(out.read_text())

    m = report["machine"]
    for key in ("cpu", "cpu_cores", "device", "torch", "ray", "load_avg_start", "load_avg_end"):
        assert key in m, key
    assert report["quick"] is True and positive(report["wall_s"])

    ingest = report["ingest"]
    assert set(ingest["rows"]) == {"ray_data", "dataloader", "h5py_loop"}
    for row in ingest["rows"].values():
        assert positive(row["windows_per_s"]) and positive(row["mb_per_s"])
        assert {e["windows"] for e in row["epochs"]} == {ingest["dataset"]["windows_per_epoch"]}  # every window, every epoch
    rate = {name: row["windows_per_s"] for name, row in ingest["rows"].items()}
    assert ingest["ratios"] == pytest.approx({"ray_data_vs_dataloader": rate["ray_data"] / rate["dataloader"],
                                              "ray_data_vs_h5py_loop": rate["ray_data"] / rate["h5py_loop"]})
    assert set(ingest["targets"]) == set(ingest["ratios"])
    assert all(t["met"] == (ingest["ratios"][k] >= t["target"]) for k, t in ingest["targets"].items())

    train = report["train"]
    assert {(r["precision"], r["compile"]) for r in train["rows"]} == {("fp32", False)}  # --quick: no bf16, no compile
    for row in train["rows"]:
        assert positive(row["bare"]["samples_per_s"]) and positive(row["ray_train"]["samples_per_s"])
        assert row["ray_vs_bare"] == pytest.approx(row["ray_train"]["samples_per_s"] / row["bare"]["samples_per_s"])
        assert row["ray_train"]["epochs"] == 2
    overhead = train["targets"]["ray_train_overhead"]
    assert overhead["worst"] == pytest.approx(1 - min(r["ray_vs_bare"] for r in train["rows"]))
    assert overhead["met"] == (overhead["worst"] <= overhead["target"] + 1e-12)

    mfu = report["mfu"]
    assert positive(mfu["flops_per_sample"]) and positive(mfu["peak_flops"]["fp32"]) and positive(mfu["peak_flops"]["bf16"])
    assert len(mfu["rows"]) == 2 * len(train["rows"])
    for r, (row, runner) in zip(mfu["rows"], [(row, runner) for row in train["rows"] for runner in ("bare", "ray_train")]):
        assert r["runner"] == runner
        assert r["achieved_flops"] == pytest.approx(mfu["flops_per_sample"] * row[runner]["samples_per_s"])
        assert r["mfu"] == pytest.approx(r["achieved_flops"] / mfu["peak_flops"][r["precision"]])

    scaling = report["scaling"]
    assert [r["workers"] for r in scaling["rows"]] == [1, 2]
    assert all(positive(r["samples_per_s"]) for r in scaling["rows"])
    comm = scaling["allreduce_bytes_per_step_per_worker"]["default_config"]
    # ring all-reduce of fp32 gradients: 2 (N-1)/N x 4 bytes per parameter; N=2 sends each byte once
    assert comm["N=2"] == pytest.approx(4 * comm["params"])
    assert comm["N=8"] == pytest.approx(2 * 7 / 8 * 4 * comm["params"])

    # The training stall per checkpoint, synchronous upload and asynchronous: every checkpoint
    # but the last is timed (its stall is logged with the next epoch).
    assert "## checkpoint stall" in stdout
    ckpt = report["checkpoint"]
    assert set(ckpt["rows"]) == {"sync", "async"}
    for row in ckpt["rows"].values():
        assert len(row["stalls_s"]) == 2 and all(positive(s) for s in row["stalls_s"]) and positive(row["checkpoint_mb"])
    assert positive(ckpt["async_vs_sync"])
