"""The GPU check: one command to run first whenever a GPU is available.

    bash bench/perf/gpu_check.sh                 # sets up what it needs, then runs this (writes $LAM_BENCH_HOME/results-gpu.json)
    bash bench/perf/gpu_check.sh --cpu-dry-run   # the same sections on CPU with the tiny recipe (CI runs it)
    python -m bench.perf.gpu_check --help

Sections, each recorded in the JSON report (an error in one is recorded as a finding and the
others still run):

  versions    device, driver, CUDA, NCCL, torch, Ray, Python; the card's bf16 and fp32 matmul
              peak measured in this process (the MFU denominator)
  attention   the model's forward and backward with scaled_dot_product_attention restricted to
              the flash backend, then to flash or memory-efficient: which ran, or the error
  train       the spec's default model through Ray Train (`lam.train.launch.train`, one
              worker, `use_gpu`) for a fixed number of steps: bf16 and fp32, with and without
              torch.compile; samples/s after warm-up, peak GPU memory, MFU, time blocked on
              data as a fraction of the epoch, and the stall of a checkpoint saved every epoch
  ingest      the model's appetite (windows/s of a bare bf16 loop on batches in memory) next to
              what Ray Data delivers into a Train worker with this node's CPUs
  overfit     the spec's overfit mode (`test_mode`: one batch, PASS when MSE < 0.01, MAE < 0.05)
  checkpoint  the default model with AdamW state: size, the copy into host memory that an
              asynchronous checkpoint waits for, and the file write that a synchronous one adds
  batch       the bare bf16 loop (one process, no Ray, batches in memory) at growing batch sizes:
              samples/s, MFU and peak memory, i.e. how much of the card the default batch fills

`--sections` runs a subset (the versions section always runs: it measures the MFU denominator).

The dry run (`--cpu-dry-run`) uses the tiny recipe, few steps, fp32 and bf16 without compile
(compiling on CPU builds C++ for minutes), so the script is exercised between GPU loans.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.home import REPO, bench_home


# What each mode runs: the model's recipe, batch, steps per epoch, variants, and the overfit run.
PLANS = {
    "gpu": {"recipe": "spec", "batch_size": 32, "steps": 16, "epochs": 2, "variants": [("bf16", False), ("fp32", False), ("bf16", True), ("fp32", True)],
            "matmul_n": 8192, "overfit": {"num_epochs": 300, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 20},
            "batch_sizes": [32, 64, 128, 256, 512], "batch_steps": 6},
    "cpu-dry-run": {"recipe": "tiny", "batch_size": 4, "steps": 3, "epochs": 2, "variants": [("bf16", False)],
                    "matmul_n": 512, "overfit": {"num_epochs": 20, "batch_size": 4, "learning_rate": 2e-3, "warmup_steps": 2},
                    "batch_sizes": [2, 4], "batch_steps": 2},
}
SECTIONS = ["versions", "attention", "train", "overfit", "checkpoint", "ingest", "batch"]


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def nvidia_smi() -> dict:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    name, driver, memory = (part.strip() for part in out[0].split(",")) if out else ("", "", "")
    return {"gpu": name, "driver": driver, "gpu_memory": memory}


# ----------------------------------------------------------------------------- sections


def versions(device: torch.device, plan: dict) -> dict:
    import ray

    from bench.perf.train_step import matmul_peak

    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "ray": ray.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            **nvidia_smi()}
    if device.type == "cuda":
        nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
        info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        info["cudnn"] = torch.backends.cudnn.version()
    n = plan["matmul_n"]
    info["peak_flops"] = {"bf16": matmul_peak(torch.bfloat16, device, n=n), "fp32": matmul_peak(torch.float32, device, n=n)}
    info["peak_method"] = (f"best of timed {n}x{n} torch.matmul bursts in this process; smaller matrices on a CPU "
                           "where one such product takes over half a second")
    return info


def attention(device: torch.device, model_cfg, frames: int) -> dict:
    """Forward + backward of the model under bf16 autocast with SDPA limited to fast backends."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lam.model import LatentActionModel

    model = LatentActionModel(model_cfg).to(device).train()
    x = torch.randn(2, frames, model_cfg.in_channels, model_cfg.latent_size, model_cfg.latent_size, device=device)
    out = {}
    for name, backends in {"flash": [SDPBackend.FLASH_ATTENTION],
                           "flash_or_memory_efficient": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]}.items():
        try:
            with sdpa_kernel(backends), torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(x).loss
            loss.backward()
            out[name] = "ran"
        except Exception as e:  # a finding, not a crash: which backend the attention cannot use, and why
            out[name] = first_line(e)
        model.zero_grad(set_to_none=True)
    return out


def train_rows(variants: list, plan: dict, cfg, device: torch.device, peak: dict, deadline: float) -> list[dict]:
    from bench.perf.run import variant_config
    from bench.perf.train_step import flops_per_sample, ray_train

    flops = flops_per_sample(cfg.model, cfg.data.sequence_length)
    cpus = 1 if device.type == "cuda" else max(1, (os.cpu_count() or 2) // 2)
    rows = []
    for precision, compile_ in variants:
        label = f"{precision}{' +compile' if compile_ else ''}"
        if time.time() > deadline:
            rows.append({"precision": precision, "compile": compile_, "skipped": "over the time budget (--budget_s)"})
            continue
        print(f"[gpu-check] train: Ray Train, 1 worker, {label}", flush=True)
        c = variant_config(cfg, precision, compile_, 1, cpus, f"gpu-check-{precision}-{int(compile_)}")
        c.train.save_every = 1  # a checkpoint every epoch: its stall is in the next epoch's record
        try:
            r = ray_train(c)
        except Exception as e:
            rows.append({"precision": precision, "compile": compile_, "error": first_line(e)})
            continue
        epoch_s = c.train.batch_size * plan["steps"] / r["epoch_samples_per_s"][-1]
        rows.append({"precision": precision, "compile": compile_, "samples_per_s": r["samples_per_s"],
                     "mfu": flops * r["samples_per_s"] / peak[precision], "peak_memory_gb": r.get("peak_memory_gb"),
                     "data_wait_fraction": r["data_wait_s"] / epoch_s, "checkpoint_stall_s": r.get("checkpoint_stall_s")})
    return rows


def ingest(plan: dict, cfg, manifest, batches, device: torch.device, workdir: Path) -> dict:
    import ray

    from bench.perf import ingest as bench_ingest
    from bench.perf.run import variant_config
    from bench.perf.train_step import bare_loop

    print("[gpu-check] ingest: the model's appetite (bare bf16 loop, batches in memory)", flush=True)
    appetite = bare_loop(variant_config(cfg, "bf16", False, 1, 1, "appetite"), batches, 2, max(4, len(batches) - 2), device)
    print("[gpu-check] ingest: Ray Data into a Train worker, this node's CPUs", flush=True)
    delivered = bench_ingest.ray_data(manifest, cfg, 3, workdir)
    read_cpus = int(ray.cluster_resources().get("CPU", 1)) - 1  # one is the consuming worker's
    return {"model_windows_per_s": appetite["samples_per_s"], "ray_data_windows_per_s": delivered["windows_per_s"],
            "delivered_vs_appetite": delivered["windows_per_s"] / appetite["samples_per_s"],
            "read_cpus": read_cpus, "windows_per_s_per_read_cpu": delivered["windows_per_s"] / max(read_cpus, 1),
            "ray_data_after_start_up": delivered["after_start_up_windows_per_s"], "epoch_start_up_s": delivered["epoch_start_up_s"]}


def overfit(plan: dict, cfg) -> dict:
    import copy

    from lam.train.launch import train

    print("[gpu-check] overfit: the spec's test mode", flush=True)
    c = copy.deepcopy(cfg)
    t = c.train
    for key, value in plan["overfit"].items():
        setattr(t, key, value)
    t.test_mode, t.log_every, t.run_name, t.precision = True, 0, "gpu-check-overfit", "auto"
    start = time.perf_counter()
    outcome = train(c, verbose=False)
    m = outcome.metrics
    return {"passed": outcome.passed, "mse": m.get("overfit/mse_loss"), "mae": m.get("overfit/mae_loss"),
            "copy_last_mse": m.get("overfit/copy_last_mse"), "steps": t.num_epochs, "seconds": time.perf_counter() - start}


def checkpoint(model_cfg, frames: int, device: torch.device, workdir: Path) -> dict:
    """The default model with AdamW state, timed the way the training loop saves it."""
    from lam.model import LatentActionModel
    from lam.runtime.checkpoint import save_checkpoint
    from lam.train.saving import snapshot

    print("[gpu-check] checkpoint: the default model with its optimizer state", flush=True)
    model = LatentActionModel(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    model(torch.randn(1, frames, model_cfg.in_channels, model_cfg.latent_size, model_cfg.latent_size, device=device)).loss.backward()
    optimizer.step()  # creates the AdamW moments
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    snapshot(state)  # warm-up: the first pinned allocation is slower
    start = time.perf_counter()
    held = snapshot(state)
    snapshot_s = time.perf_counter() - start
    target = workdir / "checkpoint"
    start = time.perf_counter()
    path = save_checkpoint(target, **held)
    write_s = time.perf_counter() - start
    size = path.stat().st_size
    shutil.rmtree(target, ignore_errors=True)
    return {"params": sum(p.numel() for p in model.parameters()), "size_mb": size / 1e6, "snapshot_s": snapshot_s,
            "write_s": write_s, "async_stall_s": snapshot_s, "sync_stall_s": snapshot_s + write_s,
            "note": "async: training waits for the snapshot only; sync also waits for the write (and for the copy into "
                    "the run directory, not timed here)"}


def batch_scaling(plan: dict, cfg, batches: list[torch.Tensor], device: torch.device, peak: dict, deadline: float) -> dict:
    """The bare bf16 loop (eager) at each of the plan's batch sizes.

    The windows in memory are regrouped into batches of each size and cycled, so every size trains on
    the same data. A size the card cannot hold is recorded as such and ends the sweep."""
    from bench.perf.run import variant_config
    from bench.perf.train_step import bare_loop, flops_per_sample

    flops = flops_per_sample(cfg.model, cfg.data.sequence_length)
    windows = torch.cat(batches)
    rows: list[dict] = []

    def row(batch_size: int, attention: str) -> dict:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        label = f"batch {batch_size}, attention {attention}"
        base = {"batch_size": batch_size, "attention": attention}
        if time.time() > deadline:
            return {**base, "skipped": "over the time budget (--budget_s)"}
        print(f"[gpu-check] batch: bare bf16 loop, {label}", flush=True)
        groups = [windows[i : i + batch_size] for i in range(0, len(windows) - batch_size + 1, batch_size)]
        if not groups:
            return {**base, "skipped": f"fewer than {batch_size} windows in memory"}
        c = variant_config(cfg, "bf16", False, 1, 1, f"gpu-check-batch-{batch_size}")
        c.train.batch_size = batch_size
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        backends = (nullcontext() if attention == "any"
                    else sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]))
        try:
            with backends:
                r = bare_loop(c, groups, 2, plan["batch_steps"], device)
        except torch.OutOfMemoryError as e:  # a finding (the card's limit for this model), not a failure
            return {**base, "out_of_memory": first_line(e)}
        except RuntimeError as e:  # a kernel that refuses this size: recorded, and the sweep tries without it
            return {**base, "error": first_line(e)}
        memory = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
        return {**base, "samples_per_s": r["samples_per_s"], "mfu": flops * r["samples_per_s"] / peak["bf16"],
                "step_s": r["step_s"], "peak_memory_gb": memory}

    attention = "any"
    for batch_size in plan["batch_sizes"]:
        rows.append(row(batch_size, attention))
        if "error" in rows[-1] and attention == "any":
            attention = "no_cudnn"
            rows.append(row(batch_size, attention))
        if "samples_per_s" not in rows[-1]:
            break
    return {"model": plan["recipe"], "precision": "bf16", "rows": rows}


# ----------------------------------------------------------------------------- report


def print_table(report: dict) -> None:
    v = report.get("versions", {})
    print(f"\n# GPU check ({report['mode']}), {report['date']}, commit {report['commit']}")
    if "error" not in v:
        print(f"device {v['device']} (driver {v.get('driver', '-')}, CUDA {v.get('cuda')}, NCCL {v.get('nccl', '-')}), "
              f"torch {v['torch']}, ray {v['ray']}, python {v['python']}, {v['cpus']} CPUs; matmul peak bf16 "
              f"{v['peak_flops']['bf16'] / 1e12:.1f} TFLOP/s, fp32 {v['peak_flops']['fp32'] / 1e12:.1f} TFLOP/s")
    print(f"attention: {report.get('attention')}")
    rows = report.get("train", {}).get("rows", [])
    if rows:
        print(f"\n{'variant':<16}{'samples/s':>10}{'MFU':>8}{'peak GB':>9}{'data wait':>11}{'ckpt stall s':>14}")
        for r in rows:
            label = f"{r['precision']}{' +compile' if r['compile'] else ''}"
            if "error" in r or "skipped" in r:
                print(f"{label:<16}  {r.get('error') or r['skipped']}")
                continue
            gb = f"{r['peak_memory_gb']:.1f}" if r.get("peak_memory_gb") is not None else "-"
            stall = f"{r['checkpoint_stall_s']:.3f}" if r.get("checkpoint_stall_s") is not None else "-"
            print(f"{label:<16}{r['samples_per_s']:>10.1f}{r['mfu']:>8.1%}{gb:>9}{r['data_wait_fraction']:>10.1%}{stall:>14}")
    batch_rows = report.get("batch", {}).get("rows", [])
    if batch_rows:
        print(f"\n{'bare bf16 loop':<22}{'samples/s':>10}{'MFU':>8}{'peak GB':>9}")
        for r in batch_rows:
            label = f"batch {r['batch_size']}{', no cuDNN' if r['attention'] != 'any' else ''}"
            if "samples_per_s" not in r:
                print(f"{label:<22}  {r.get('error') or r.get('out_of_memory') or r['skipped']}")
                continue
            gb = f"{r['peak_memory_gb']:.1f}" if r.get("peak_memory_gb") is not None else "-"
            print(f"{label:<22}{r['samples_per_s']:>10.1f}{r['mfu']:>8.1%}{gb:>9}")
    for name in ("ingest", "overfit", "checkpoint"):
        section = report.get(name)
        if section is not None:
            print(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in section.items() if k != "note"))
    print(f"\nwall time {report['wall_s']:.0f} s; sections with errors: {report['errors'] or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf.gpu_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--cpu-dry-run", action="store_true", help="run every section on CPU with the tiny recipe (no GPU needed)")
    parser.add_argument("--out", default=None, help="JSON report (default: $LAM_BENCH_HOME/results-gpu.json, ~/.cache/lam-bench/ unless set; results-gpu-dry-run.json for a dry run)")
    parser.add_argument("--budget_s", type=float, default=420,
                        help="sections and rows not started by then are skipped (recorded as such); default 420 s, so the "
                             "whole check with its set-up fits in about 8 minutes")
    parser.add_argument("--workdir", default=None, help="where data and runs go (default: a temporary folder, removed)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all; versions always runs)")
    args = parser.parse_args(argv)
    wanted = {name for name in args.sections.split(",") if name} | {"versions"}
    if wanted - set(SECTIONS):
        parser.error(f"--sections: unknown {', '.join(sorted(wanted - set(SECTIONS)))} (known: {', '.join(SECTIONS)})")
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    plan = PLANS[mode]
    if mode == "gpu" and not torch.cuda.is_available():
        print(f"gpu check: torch {torch.__version__} sees no CUDA device; run with --cpu-dry-run to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    out = Path(args.out or bench_home() / ("results-gpu.json" if mode == "gpu" else "results-gpu-dry-run.json"))

    from bench.perf.run import bench_ray, quiet_warnings, train_setup

    quiet_warnings()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lam-gpu-check-"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report: dict = {"mode": mode, "date": time.strftime("%Y-%m-%d"), "commit": commit or None, "errors": []}
    start = time.time()

    deadline = start + args.budget_s

    def section(name: str, fn, *fn_args):
        if name not in wanted:
            return {}
        if time.time() > deadline:
            report[name] = {"skipped": "over the time budget (--budget_s)"}
            return report[name]
        try:
            report[name] = fn(*fn_args)
        except Exception as e:
            traceback.print_exc()
            report[name] = {"error": first_line(e)}
            report["errors"].append(name)
        return report[name]

    try:
        with bench_ray("gpu-check"):
            info = section("versions", versions, device, plan)
            setup_args = SimpleNamespace(model=plan["recipe"], device=device)
            sizes = {"train": {"batch_size": plan["batch_size"], "steps": plan["steps"], "epochs": plan["epochs"]}}
            cfg, batches = train_setup(setup_args, sizes, workdir)
            cfg.train.num_epochs = plan["epochs"]
            from lam.data.manifest import load_manifest
            from lam.model import ModelConfig

            manifest = load_manifest(Path(cfg.data.data_dir) / "manifest.json")
            section("attention", attention, device, cfg.model, cfg.data.sequence_length)
            peak = info.get("peak_flops") or {"bf16": float("nan"), "fp32": float("nan")}
            eager = [v for v in plan["variants"] if not v[1]] if "train" in wanted else []
            compiled = [v for v in plan["variants"] if v[1]] if "train" in wanted else []
            if "train" in wanted:
                report["train"] = {"model": plan["recipe"], "batch_size": plan["batch_size"], "steps_per_epoch": plan["steps"],
                                   "epochs": plan["epochs"], "rows": train_rows(eager, plan, cfg, device, peak, deadline)}
            section("overfit", overfit, plan, cfg)
            section("checkpoint", checkpoint, ModelConfig() if mode == "gpu" else cfg.model, cfg.data.sequence_length, device, workdir)
            section("ingest", ingest, plan, cfg, manifest, batches, device, workdir)
            section("batch", batch_scaling, plan, cfg, batches, device, peak, deadline)
            report["errors"] += ["batch"] if any("error" in r for r in report.get("batch", {}).get("rows", [])) else []
            if "train" in wanted:
                report["train"]["rows"] += train_rows(compiled, plan, cfg, device, peak, deadline)  # compiling takes the longest
                report["errors"] += ["train"] if any("error" in r for r in report["train"]["rows"]) else []
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["wall_s"] = time.time() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"report: {out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
