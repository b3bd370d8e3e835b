"""Training-step, MFU and scaling benchmarks.

  bare_loop      one process, no Ray: the same model, batch and training step
                 (`lam.train.step.TrainStep`: AdamW, LR schedule, grad clipping, dead-code
                 revival) as `lam.train.loop`, on batches of real windows already in memory
                 (so it is an upper bound: no input pipeline).
  ray_train      the real thing: `lam.train.launch.train` (TorchTrainer + Ray Data + the
                 worker loop), reading the windows from H5 through Ray Data.
  matmul_peak    this machine's dense matmul FLOP/s in a dtype, measured in this process.
  flops          FLOPs of one training step per sample (forward + backward), counted by
                 `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and
                 attention, 2 FLOPs per multiply-add; elementwise ops are not counted).
  comm_bytes     analytic DDP gradient all-reduce volume per step and per worker.

Warm-up is excluded everywhere: the bare loop times `steps` steps after `warmup` untimed
ones; the Ray Train rate is `train/steady_samples_per_s` of the last epoch (that epoch
without its first step, so neither the pipeline's per-epoch start-up nor torch.compile's
compilation, which happens in epoch 1, is in it).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from lam.config import ModelConfig, RunConfig
from lam.model import LatentActionModel
from lam.recipes import recipe_config
from lam.train.schedule import lr_multiplier
from lam.train.step import TrainStep


def model_preset(name: str) -> tuple[ModelConfig, int]:
    """(model config, sequence_length) of a named recipe (`lam.recipes`).

    spec  the spec's model: for GPUs; on 2 CPU cores one step of batch 2 takes many seconds.
    demo  the `lam demo` recipe: what 2 CPU cores train.
    tiny  the tests' model: seconds, for checking the suite itself.
    """
    cfg = recipe_config(name)
    return cfg.model, cfg.data.sequence_length


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- bare loop


def bare_loop(cfg: RunConfig, batches: list[torch.Tensor], warmup: int, steps: int, device: torch.device) -> dict:
    """samples/s of a plain single-process loop; `batches` are stored-dtype CPU tensors, cycled."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = LatentActionModel(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay,
                                  betas=(0.9, 0.95), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, t.warmup_steps, warmup + steps, t.min_lr_ratio))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16" else nullcontext()
    step_model = torch.compile(model) if t.compile else model
    train_step = TrainStep(step_model, model, optimizer, scheduler, autocast, t.grad_clip)  # the real loop's step

    def step(x: torch.Tensor) -> None:
        train_step(x.to(device, non_blocking=True).float())  # stored dtype -> fp32 once, on the device

    warm_start = time.perf_counter()
    for i in range(warmup):
        step(batches[i % len(batches)])
    sync(device)
    warmup_s = time.perf_counter() - warm_start
    start = time.perf_counter()
    for i in range(steps):
        step(batches[(warmup + i) % len(batches)])
    sync(device)
    seconds = time.perf_counter() - start
    samples = sum(batches[(warmup + i) % len(batches)].shape[0] for i in range(steps))
    return {"samples_per_s": samples / seconds, "warmup_steps": warmup, "warmup_s": warmup_s, "timed_steps": steps,
            "step_s": seconds / steps, "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- Ray Train


def train_outcome(cfg: RunConfig):
    """A run of the real training service (`lam.train.launch.train`), quietly."""
    from lam.train.launch import train

    return train(cfg, verbose=False)


def ray_train(cfg: RunConfig) -> dict:
    """samples/s of the real training service (all workers together), from its metrics.jsonl."""
    outcome = train_outcome(cfg)
    records = [json.loads(line) for line in Path(outcome.run_dir, "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    last = epochs[-1]
    return {
        "samples_per_s": last["train/steady_samples_per_s"],
        "epoch_samples_per_s": [r["train/samples_per_s"] for r in epochs],  # whole epochs, start-up included
        "data_wait_s": last["train/data_wait_s"],
        "peak_memory_gb": last.get("train/peak_memory_gb"),  # on GPU
        "checkpoint_stall_s": last.get("checkpoint/stall_s"),  # the previous epoch's checkpoint, when one was saved
        "epochs": len(epochs),
        "num_workers": cfg.train.num_workers,
        "cpus_per_worker": cfg.train.cpus_per_worker,
    }


# ----------------------------------------------------------------------------- FLOPs and peak


def flops_per_sample(model_cfg: ModelConfig, frames: int) -> float:
    """Forward + backward FLOPs of one sample (FlopCounterMode; see lam.model.flops)."""
    from lam.model.flops import count_flops

    return count_flops(model_cfg, frames=frames, backward=True)["total"] * 1e9


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """Dense n x n matmul FLOP/s, best of a few timed bursts after warm-up. On a CPU, n shrinks
    where one product would take more than half of `seconds`."""
    if device.type == "cpu":
        n = affordable_matmul_size(dtype, n, seconds / 2)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    reps = 2 if device.type == "cpu" else 20
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def affordable_matmul_size(dtype: torch.dtype, n: int, seconds: float, probe: int = 256) -> int:
    """The largest size up to n whose CPU matmul takes about `seconds` at most, from the speed of a
    small one. CPUs without native bf16 emulate it, up to a hundred times slower than fp32, and a
    full-size product would then hold the benchmark for minutes."""
    a = torch.randn(probe, probe).to(dtype)
    a @ a
    start = time.perf_counter()
    a @ a
    flops_per_s = 2 * probe**3 / max(time.perf_counter() - start, 1e-9)
    return max(probe, min(n, int((flops_per_s * seconds / 2) ** (1 / 3))))


def param_count(model_cfg: ModelConfig) -> int:
    return sum(p.numel() for p in LatentActionModel(model_cfg).parameters())


def comm_bytes(params: int, workers: int, bytes_per_grad: int = 4) -> float:
    """Bytes each worker sends (and receives) per step in a ring all-reduce of the gradients:
    2 (N - 1) / N x gradient bytes. DDP reduces fp32 gradients, also under bf16 autocast
    (the parameters stay fp32)."""
    return 2 * (workers - 1) / workers * params * bytes_per_grad


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
