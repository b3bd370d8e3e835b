"""The per-worker training loop that Ray Train runs on every rank.

Read top to bottom: setup -> resume -> epochs (train steps, validation, report
+ checkpoint). The Ray-specific lines are few and marked `# ray:`. Only rank 0
has side effects (metrics file, wandb, console lines, checkpoint files).

Reproducibility: `seed` fixes everything a run draws. The initial weights come
from `seed` (the same on every rank). Every epoch starts by seeding Python,
NumPy and torch from (seed, epoch, rank) and by telling the train dataset its
epoch (`lam.train.ledger.RunLedger`), whose order is drawn from (seed, epoch).
So an epoch draws the same numbers whether the run got there straight, after a
worker died and Ray Train restored the last checkpoint, or after a resume: the
checkpoint's model, optimizer and scheduler carry the rest. VQ's dead-code
revival draws from its own generator, seeded by a step counter kept in the
model's buffers (so in the checkpoint); the action-quality check uses fixed
seeds of its own.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import ray.train
import ray.train.torch
from ray.train.v2._internal.execution import context as train_context

from lam.config import RunConfig
from lam.data.manifest import load_manifest
from lam.eval.evaluate import evaluate_windows, split_batches, summarize
from lam.model import LatentActionModel
from lam.runtime.run_log import RunLogger, format_eta
from lam.train.health import SkippedSteps, params_in_sync, report_bad_windows, state_is_finite
from lam.train.metrics import CodeCounter, MeanTracker
from lam.train import saving
from lam.train.resume import load_resume_state, new_checkpoint_name
from lam.train.schedule import label_multiplier, lr_multiplier
from lam.train.step import TrainStep


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = RunConfig.from_dict(loop_config["config"])
    run_dir, local_dir = loop_config["run_dir"], loop_config["local_dir"]
    sizes = loop_config["sizes"]
    # The train dataset reads the epoch's order from the ledger; the datasets report the windows they left out to it.
    ledger = loop_config.get("ledger")
    t = cfg.train

    # ---------------------------------------------------------------- setup
    quiet_per_report_logs()
    ctx = ray.train.get_context()  # ray:
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # ray:
    # ray: this worker's share of each epoch. Asked for first: rank 0's request starts the
    # datasets' split coordinators (new processes), which then start up while this worker
    # builds its model, joins DDP and opens its logger.
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if sizes.get("val") else None
    torch.manual_seed(t.seed)  # identical initial weights on every rank

    model = LatentActionModel(cfg.model).to(device)
    raw_model = model
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay, betas=(0.9, 0.95),
        fused=True,  # one kernel for the whole update, and its `found_inf` skips a step without a host read
    )
    per_worker_batch = t.batch_size // world
    steps_per_epoch = 1 if t.test_mode else math.ceil((sizes["train"] // world) / per_worker_batch)
    total_steps = steps_per_epoch * t.num_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, t.warmup_steps, total_steps, t.min_lr_ratio)
    )
    amp_dtype = resolve_precision(t.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp_dtype == torch.bfloat16 else nullcontext()

    # --------------------------------------------------------------- resume
    start_epoch, step, saved_record, resumed_from, damaged = 0, 0, None, None, []
    checkpoint = ray.train.get_checkpoint()  # ray: the latest checkpoint of this run, if any
    if checkpoint is not None:  # or, when that one is damaged, the newest intact one before it
        state, resumed_from, damaged = load_resume_state(checkpoint, run_dir, device)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        saved_record = state.get("metrics")
        # The checkpoint's RNG states are not restored: every epoch seeds its own (seed_epoch).

    # ray: DDP wrap (gloo on CPU, NCCL on GPU). No buffer broadcast before every forward: the
    # quantizer's and the whitening's buffers are kept identical by their own all-reduces, or
    # are per-rank bookkeeping. Newer torch calls the switch `forward_sync_buffers` (and warns
    # about the old name); it still syncs once at wrap time, which is harmless: the ranks have
    # just built or loaded the same model.
    ddp_has_new_name = "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if ddp_has_new_name else {"broadcast_buffers": False}
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=no_buffer_sync)
    if t.compile:
        model = torch.compile(model)

    logger = None
    if rank == 0:
        logger = RunLogger(run_dir, local_dir, cfg.to_dict(), t.wandb_mode, t.wandb_project, t.run_name, t.wandb_group)
        if checkpoint is not None:
            logger.resume_from(step)
            for problem in damaged:
                print(f"[lam] warning: {problem}; passed over", flush=True)
            print(f"[lam] resumed {t.run_name} from {resumed_from} at epoch {start_epoch + 1}, step {step}, lr {scheduler.get_last_lr()[0]:.3g}", flush=True)

    keys = raw_model.metric_names
    eval_manifest = None  # rank 0's action-quality checks read val windows directly; load the manifest once
    if rank == 0 and val_shard is not None and t.eval_every and not t.test_mode:
        eval_manifest = load_manifest(cfg.data.manifest, cfg.data.data_dir)

    def to_device(batch) -> torch.Tensor:
        # Stored dtype (float16) -> float32 once, on the device.
        return batch["x"].to(device, non_blocking=True).float()

    train_step = TrainStep(model, raw_model, optimizer, scheduler, autocast, t.grad_clip,
                           {"shift": t.augment_shift, "crop": t.augment_crop, "gain": t.augment_gain})

    def wait_for_device() -> None:
        """Before reading a clock: queued GPU work must be done for the time to be honest."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fixed_batch = None  # test mode: the one batch, kept on device
    skips = SkippedSteps(device, t.max_nonfinite_steps)
    checkpoint_stall = None  # seconds the last checkpoint held training up
    run_start = time.time()
    if rank == 0:
        print(f"[lam] training {t.run_name}: {sizes['train']} train windows, {sizes.get('val', 0)} val windows, "
              f"{world} worker(s) x batch {per_worker_batch}, {steps_per_epoch} steps/epoch, epochs {start_epoch + 1}..{t.num_epochs}", flush=True)

    # --------------------------------------------------------------- epochs
    for epoch in range(start_epoch, t.num_epochs):
        seed_epoch(t.seed, epoch, rank)
        if ledger is not None and rank == 0:
            # Before this rank asks for the epoch's data; the other ranks' requests wait for
            # this one (see lam/train/ingest.py), so no rank can start the epoch before it is set.
            ray.get(ledger.set_epoch.remote(epoch))  # ray:
        epoch_start, samples = time.time(), 0
        tracker, grad_norms, skipped_before = MeanTracker(), MeanTracker(), skips.reported
        codes = CodeCounter(cfg.model.num_codes, cfg.model.num_embeddings, device)  # the epoch's usage, not a batch's
        # Throughput bookkeeping: time spent blocked on the data iterator, and the rate after the
        # epoch's first step (which carries the pipeline's start-up and, in epoch 1, compile warm-up).
        data_wait, steady_start, steady_samples = 0.0, None, 0

        if t.test_mode and fixed_batch is None:
            fixed_batch = to_device(next(iter(train_shard.iter_torch_batches(batch_size=per_worker_batch))))
        batches = [{"x": fixed_batch}] if t.test_mode else train_shard.iter_torch_batches(
            batch_size=per_worker_batch, prefetch_batches=t.prefetch_batches, pin_memory=device.type == "cuda"
        )
        wait_start = time.perf_counter()
        for batch in batches:
            data_wait += time.perf_counter() - wait_start
            x = batch["x"] if t.test_mode else to_device(batch)
            labels = batch["labels"].to(device, non_blocking=True) if "labels" in batch else None  # the opt-in label head
            label_scale = None if labels is None else torch.tensor(label_multiplier(t.label_schedule, step, total_steps), device=device)
            metrics, grad_norm, applied = train_step(x, labels, label_scale)
            step += 1
            samples += x.shape[0] * world
            if steady_start is None:
                wait_for_device()
                steady_start, steady_samples = time.perf_counter(), samples
            skips.add(applied)
            tracker.add(metrics, weight=x.shape[0], keep=applied)  # skipped steps stay out of the means
            codes.add(train_step.last_indices, keep=applied)
            grad_norms.add({"grad_norm": grad_norm}, weight=1, keep=applied)  # a mean over applied steps
            if step % SkippedSteps.CHECK_EVERY == 0:
                skips.check(step, scheduler.get_last_lr()[0], warn=rank == 0)
            maybe_inject_fault(t.inject_fault_at_step, step, rank, run_dir)
            if rank == 0 and not t.test_mode and t.log_every and step % t.log_every == 0:
                wait_for_device()
                elapsed = time.time() - epoch_start
                rate = samples / max(elapsed, 1e-9)
                remaining = (total_steps - step) * t.batch_size / max(rate, 1e-9)
                logger.log({step_metric_name(k): float(v) for k, v in metrics.items()} | {"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm)}, step)
                print(f"[lam] epoch {epoch + 1}/{t.num_epochs} step {step}/{total_steps} loss {float(metrics['loss']):.4f} "
                      f"mse {float(metrics['mse_loss']):.4f} {rate:.1f} samples/s ETA {format_eta(remaining)}", flush=True)
            wait_start = time.perf_counter()
        wait_for_device()
        loop_end = time.perf_counter()
        raw_model.after_epoch()  # e.g. the gaussian bottleneck's k-means fit, identical on every rank

        record = tracker.compute("train", keys, device) | codes.compute("train")
        record["train/lr"] = scheduler.get_last_lr()[0]
        skipped = skips.check(step, scheduler.get_last_lr()[0], warn=rank == 0) - skipped_before
        record["train/grad_norm"] = grad_norms.compute("train", ["grad_norm"], device).get("train/grad_norm", 0.0)
        record["train/samples_per_s"] = samples / max(time.time() - epoch_start, 1e-9)
        steady_time = loop_end - steady_start if steady_start is not None else 0.0
        record["train/steady_samples_per_s"] = (samples - steady_samples) / steady_time if samples > steady_samples else record["train/samples_per_s"]
        record["train/data_wait_s"] = data_wait  # rank 0's; ~0 when ingest keeps up with the model
        record["train/skipped_steps"] = skipped  # steps whose loss or gradient was not finite
        if checkpoint_stall is not None:
            record["checkpoint/stall_s"] = checkpoint_stall  # the previous checkpoint's
        if device.type == "cuda":
            record["train/peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        record["epoch"] = epoch + 1
        record["ddp/params_in_sync"] = float(params_in_sync(raw_model, device))
        if val_shard is not None:
            val_keys = [k for k in keys if not k.startswith("label_")]  # val files are never read for labels
            record |= evaluate(model, val_shard, per_worker_batch, val_keys, device, autocast, to_device,
                               CodeCounter(cfg.model.num_codes, cfg.model.num_embeddings, device))
        if rank == 0 and ledger is not None:
            record["data/skipped_windows"] = report_bad_windows(ray.get(ledger.take_bad_windows.remote(epoch)), epoch)  # ray:
        if t.test_mode:
            record |= evaluate_batch(model, fixed_batch, keys, device, autocast)
        elif eval_manifest is not None and (epoch + 1) % t.eval_every == 0:
            quality, collapse = action_quality(raw_model, cfg, eval_manifest, device)
            record |= quality
            for warning in collapse:  # e.g. every transition shares one action id
                print(f"[lam] warning: epoch {epoch + 1}: {warning}", flush=True)

        # ------------------------------------------------ report + checkpoint
        last = epoch + 1 == t.num_epochs
        is_log_point = not t.test_mode or last or (t.log_every and (epoch + 1) % t.log_every == 0)
        save = last or (not t.test_mode and (epoch + 1) % t.save_every == 0)
        if not (is_log_point or save):
            continue
        score = checkpoint_score(record, t.checkpoint_metric, t.checkpoint_mode)
        record["checkpoint_score"] = score
        state = None
        if rank == 0:
            logger.log({k: v for k, v in record.items() if k != "checkpoint_score"}, step)
            logger.flush()
            print(f"[lam] epoch {epoch + 1}/{t.num_epochs} done: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k.startswith(("train/loss", "train/mse", "train/mae", "val/loss", "val/mse", "val/mae", "train/codebook_usage", "train/samples"))) +
                  f" | elapsed {format_eta(time.time() - run_start)}", flush=True)
            healthy = score is not None and math.isfinite(score) and state_is_finite(raw_model)
            if save and not healthy:  # a poisoned checkpoint must never be registered (and evict a good one)
                why = f"this epoch has no {t.checkpoint_metric}" if score is None else f"the weights or the score ({score}) are not finite"
                print(f"[lam] warning: epoch {epoch + 1}: not saving a checkpoint: {why}", flush=True)
            elif save:
                state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                             epoch=epoch, step=step, config=cfg.to_dict(),
                             metrics={k: float(v) for k, v in record.items()})  # plain floats: weights_only loads them
        name = new_checkpoint_name(run_dir, epoch + 1) if state is not None else None  # rank 0's name is every rank's
        held_up = saving.report(record, state, run_dir, name, t.checkpoint_upload)
        if state is not None:  # how long training waited for this checkpoint (its upload may go on): in the next record
            checkpoint_stall = held_up

    if start_epoch >= t.num_epochs and saved_record:
        # Resumed after the last epoch (e.g. a sweep interrupted just as this run ended):
        # nothing to train, but the caller (Tune, `lam train`) still gets the final metrics.
        ray.train.report(saved_record)  # ray:

    if logger is not None:
        logger.close()


def checkpoint_score(record: dict, metric: str, mode: str) -> float | None:
    """The number Ray Train keeps the lowest `keep_best` checkpoints by: `metric` of the epoch's
    record (val/loss falls back to train/loss in a run without a val split), negated for mode
    max; None when the record lacks it (the checkpoint is then not saved, with a warning)."""
    value = record.get(metric, record.get("train/loss") if metric == "val/loss" else None)
    if value is None:
        return None
    return value if mode == "min" else -value


def step_metric_name(key: str) -> str:
    """A metric's name in the records logged inside an epoch: the batch's code usage and
    perplexity say `batch`, as they are not the epoch's (`CodeCounter`)."""
    return f"train/batch_{key}" if key in ("codebook_usage", "perplexity") else f"train/{key}"


@torch.no_grad()
def evaluate(model, shard, batch_size, keys, device, autocast, to_device, codes: CodeCounter) -> dict:
    """Validation metrics over this worker's shard, averaged over all ranks; code usage,
    perplexity and ids used counted over the whole split (`codes`), as for training."""
    model.eval()
    tracker = MeanTracker()
    for batch in shard.iter_torch_batches(batch_size=batch_size):
        x = to_device(batch)
        with autocast:
            out = model(x)
        tracker.add(out.metrics, weight=x.shape[0])
        codes.add(out.indices)
    return tracker.compute("val", keys, device) | codes.compute("val")


@torch.no_grad()
def evaluate_batch(model, x, keys, device, autocast) -> dict:
    """Test mode: the overfit batch's metrics in eval mode (what PASS/FAIL is judged on)."""
    model.eval()
    with autocast:
        out = model(x)
    tracker = MeanTracker()
    # The decoder predicts the change from the last frame, so an untrained model *is* the
    # copy-last baseline; PASS also asks to beat it (see launch.OVERFIT_BASELINE_RATIO).
    copy_last = (x[:, :-1] - x[:, 1:]).float().pow(2).mean()
    tracker.add(out.metrics | {"copy_last_mse": copy_last}, weight=x.shape[0])
    return tracker.compute("overfit", keys + ["copy_last_mse"], device)


def action_quality(model, cfg: RunConfig, manifest, device, max_windows: int = 64) -> tuple[dict, list[str]]:
    """Rank 0: controllability (delta-t PSNR at horizon 1) and, with ground-truth actions, NMI on up
    to `max_windows` val windows; and the collapse warnings of that check.
    Inference only, no collectives: the other ranks wait at report."""
    model.eval()
    with torch.no_grad():
        acc = evaluate_windows(model, split_batches(cfg.data.sequence_length, manifest, "val", 16, max_windows, device, skip_bad=True), keep_features=False)
    report = summarize(acc, cfg.model.num_actions, bootstrap=0)  # a quick look each epoch: no sampling error
    out = {"val/delta_psnr": report["delta_psnr"]}  # ids used and their perplexity: over every val window (`evaluate`)
    if "ground_truth" in report:
        out["val/nmi"] = report["ground_truth"]["nmi"]
        out["val/code_map_accuracy"] = report["ground_truth"]["code_map_accuracy"]
    return out, report["warnings"]


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for epoch `epoch` (0-based) on `rank`.

    Derived from (seed, epoch, rank) alone, so a restored or resumed run draws in an epoch
    exactly what the uninterrupted run drew there; ranks draw different numbers, as they see
    different samples. The data order's stream is child (epoch,) of the same seed
    (`lam.train.ingest.epoch_order`); this is child (epoch, rank), another stream."""
    words = np.random.SeedSequence(seed, spawn_key=(epoch, rank)).generate_state(2)  # 2 x uint32
    random.seed(int(words[0]) << 32 | int(words[1]))
    np.random.seed(int(words[0]))
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))


def resolve_precision(precision: str, device: torch.device):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


def quiet_per_report_logs() -> None:
    """Ray Train logs every report's full metrics at INFO under a file-named logger that
    LoggingConfig does not reach; our own per-epoch line says the same, once."""
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def maybe_inject_fault(at_step: int, step: int, rank: int, run_dir: str) -> None:
    """Testing hook: fail once (a marker file remembers) so failure recovery can be exercised."""
    if not at_step or step != at_step or rank != 0:
        return
    marker = Path(run_dir) / ".fault_injected"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"step {step}\n")
    raise RuntimeError(f"injected fault at step {step} (inject_fault_at_step)")
