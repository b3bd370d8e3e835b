"""The per-worker training loop that Ray Train runs on every rank.

Read top to bottom: `train_loop_per_worker` is four named steps over a `WorkerRun`:
set-up (model, optimizer, resume, DDP, logger), an epoch of training steps, validation and the
epoch's checks, then the report and the checkpoint. The Ray-specific lines are few and marked
`# ray:`. Only rank 0 has side effects (metrics file, wandb, console lines, checkpoint files).

Reproducibility: `seed` fixes everything a run draws. The initial weights come
from `seed` (the same on every rank). Every epoch starts by seeding Python,
NumPy and torch from (seed, epoch, rank); its data order is drawn from (seed, epoch)
(lam/train/ingest.py).
So an epoch draws the same numbers whether the run got there straight, after a
worker died and Ray Train restored the last checkpoint, or after a resume: the
checkpoint's model, optimizer and scheduler carry the rest; a step checkpoint, inside an
epoch, carries each rank's place in it too (lam/train/position.py). VQ's dead-code
revival draws from its own generator, seeded by a step counter kept in the
model's buffers (so in the checkpoint); the action-quality check uses fixed
seeds of its own.

Stopping: when the driver gets SIGTERM (lam.train.launch.stop_on_sigterm) it tells the run's
ledger; the ranks look every CHECK_EVERY steps and at each epoch's end, write a step checkpoint
and end the loop together (`stop_if_requested`).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import time
from contextlib import nullcontext

import torch

import ray.train
import ray.train.torch

from lam.config import RunConfig
from lam.data.manifest import load_manifest
from lam.errors import UserError
from lam.model import LatentActionModel
from lam.runtime.checkpoint import load_optimizer_state, optimizer_state
from lam.runtime.run_log import RunLogger, format_eta
from lam.train.ingest import RankBatches, fixed_batch
from lam.train.health import SkippedSteps, maybe_inject_fault, params_in_sync, report_bad_windows, state_is_finite
from lam.train.metrics import CodeCounter, EpochClock, MeanTracker, data_wait_warning, epoch_summary, step_metric_name
from lam.train import saving
from lam.train.saving import STEP_CHECKPOINT_SCORE, checkpoint_score
from lam.train.position import EpochPosition, EpochProgress, gather_rank_states, rank_state, restore_rank_state, seed_epoch
from lam.train.resume import load_resume_state, new_checkpoint_name
from lam.train.schedule import label_multiplier, lr_multiplier
from lam.train.step import TrainStep
from lam.train.validation import action_quality, evaluate, evaluate_batch


def train_loop_per_worker(loop_config: dict) -> None:
    run = WorkerRun(loop_config)
    try:
        for epoch in range(run.start_epoch, run.t.num_epochs):
            record = run.train_epoch(epoch)
            record |= run.validate(epoch)
            run.report(epoch, record)
    except StopRequested:  # the driver got SIGTERM: a step checkpoint is written, the same command resumes there
        pass
    run.finish()


class StopRequested(Exception):
    """Every rank, at the same step, after the step checkpoint that a stop request asked for."""


class WorkerRun:
    """One rank's run: what set-up builds, and the state the epochs carry (step, skipped steps,
    the last checkpoint's stall)."""

    def __init__(self, loop_config: dict) -> None:
        self.cfg = cfg = RunConfig.from_dict(loop_config["config"])
        self.t = t = cfg.train
        self.run_dir, self.local_dir, self.sizes = loop_config["run_dir"], loop_config["local_dir"], loop_config["sizes"]
        # The read tasks report the windows they left out to the ledger; the driver's stop request comes through it.
        self.ledger = loop_config.get("ledger")
        self.plan = loop_config["ingest"]
        quiet_per_report_logs()
        ctx = ray.train.get_context()  # ray:
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = device = ray.train.torch.get_device()  # ray:
        self.has_val = bool(self.sizes.get("val"))
        torch.manual_seed(t.seed)  # identical initial weights on every rank

        self.raw_model = LatentActionModel(cfg.model).to(device)
        self.optimizer = torch.optim.AdamW(
            self.raw_model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay, betas=(0.9, 0.95),
            fused=True,  # one kernel for the whole update, and its `found_inf` skips a step without a host read
        )
        self.per_worker_batch = t.batch_size // self.world
        self.steps_per_epoch = 1 if t.test_mode else math.ceil((self.sizes["train"] // self.world) / self.per_worker_batch)
        self.total_steps = self.steps_per_epoch * t.num_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, t.warmup_steps, self.total_steps, t.min_lr_ratio)
        )
        amp_dtype = resolve_precision(t.precision, device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp_dtype == torch.bfloat16 else nullcontext()
        self.checkpoint = self.resume()
        # This rank's data for the rest of the run: one Ray Data execution, from where the checkpoint left off.
        self.data = None if t.test_mode else RankBatches(
            self.plan, self.rank, self.world, self.start_epoch, t.num_epochs, self.position.batches_done if self.position else 0,
            self.ledger, t.prefetch_batches, pin_memory=device.type == "cuda")
        self.model = self.wrap(self.raw_model)
        self.logger = self.open_logger()
        self.keys = self.raw_model.metric_names
        self.eval_manifest = None  # rank 0's action-quality checks read val windows directly; load the manifest once
        if self.rank == 0 and self.has_val and t.eval_every and not t.test_mode:
            self.eval_manifest = load_manifest(cfg.data.manifest, cfg.data.data_dir)
        self.train_step = TrainStep(self.model, self.raw_model, self.optimizer, self.scheduler, self.autocast, t.grad_clip,
                                    {"shift": t.augment_shift, "crop": t.augment_crop, "gain": t.augment_gain})
        self.fixed_batch = None  # test mode: the one batch, kept on device
        self.skips = SkippedSteps(device, t.max_nonfinite_steps)
        self.checkpoint_stall = None  # seconds the last checkpoint held training up
        self.run_start = time.time()
        if self.rank == 0:
            print(f"[lam] training {t.run_name}: {self.sizes['train']} train windows, {self.sizes.get('val', 0)} val windows, "
                  f"{self.world} worker(s) x batch {self.per_worker_batch}, {self.steps_per_epoch} steps/epoch, "
                  f"epochs {self.start_epoch + 1}..{t.num_epochs}", flush=True)

    # ------------------------------------------------------------------ set-up

    def resume(self):
        """The run's latest checkpoint (or, when that one is damaged, the newest intact one before
        it) loaded into model, optimizer and scheduler; the checkpoint, None for a new run."""
        self.start_epoch, self.step, self.saved_record, self.resumed_from, self.damaged = 0, 0, None, None, []
        self.position = None  # a step checkpoint's place inside its epoch (lam/train/position.py)
        checkpoint = ray.train.get_checkpoint()  # ray: the latest checkpoint of this run, if any
        if checkpoint is not None:
            state, self.resumed_from, self.damaged = load_resume_state(checkpoint, self.run_dir, self.device)
            self.raw_model.load_state_dict(state["model"])
            load_optimizer_state(self.optimizer, self.raw_model, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_epoch, self.step = state["epoch"] + 1, state["step"]
            self.saved_record = state.get("metrics")
            if state.get("position"):  # a step checkpoint: its epoch goes on from where it was
                self.position = EpochPosition.from_dict(state["position"])
                self.start_epoch = self.position.epoch
            # An epoch checkpoint's RNG states are not needed: every epoch seeds its own (seed_epoch).
        return checkpoint

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """ray: the DDP wrap (gloo on CPU, NCCL on GPU), then torch.compile when asked. No buffer
        broadcast before every forward: the quantizer's and the whitening's buffers are kept
        identical by their own all-reduces, or are per-rank bookkeeping. Newer torch calls the
        switch `forward_sync_buffers` (and warns about the old name); it still syncs once at wrap
        time, which is harmless: the ranks have just built or loaded the same model."""
        ddp_has_new_name = "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers": False} if ddp_has_new_name else {"broadcast_buffers": False}
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=no_buffer_sync)
        return torch.compile(model, mode=self.t.compile_mode) if self.t.compile else model

    def open_logger(self) -> RunLogger | None:
        """Rank 0's metrics file and wandb run, and the console lines of a resume."""
        if self.rank != 0:
            return None
        t = self.t
        logger = RunLogger(self.run_dir, self.local_dir, self.cfg.to_dict(), t.wandb_mode, t.wandb_project, t.run_name, t.wandb_group)
        if self.checkpoint is not None:
            logger.resume_from(self.step)
            for problem in self.damaged:
                print(f"[lam] warning: {problem}; passed over", flush=True)
            print(f"[lam] resumed {t.run_name} from {self.resumed_from} at epoch {self.start_epoch + 1}, step {self.step}, "
                  f"lr {self.scheduler.get_last_lr()[0]:.3g}", flush=True)
        return logger

    def to_device(self, batch) -> torch.Tensor:
        # Stored dtype (float16) -> float32 once, on the device.
        return batch["x"].to(self.device, non_blocking=True).float()

    def wait_for_device(self) -> None:
        """Before reading a clock: queued GPU work must be done for the time to be honest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ an epoch

    def batches(self, epoch: int):
        """This rank's batches of the epoch (test mode: the one batch, again and again)."""
        if self.t.test_mode:
            if self.fixed_batch is None:
                self.fixed_batch = self.to_device(fixed_batch(self.plan, self.rank, self.world))
            return [{"x": self.fixed_batch}]
        return self.data.train(epoch)

    def train_epoch(self, epoch: int) -> dict:
        """The epoch's training steps, and its train/ record."""
        t, device = self.t, self.device
        seed_epoch(t.seed, epoch, self.rank)
        clock = EpochClock(time.time())
        progress = EpochProgress(tracker=MeanTracker(), grad_norms=MeanTracker(), skipped_before=self.skips.reported,
                                 codes=CodeCounter(self.cfg.model.num_codes, self.cfg.model.num_embeddings, device))  # the epoch's usage, not a batch's
        self.take_position(epoch, progress)  # the stream starts after the batches trained on before a step checkpoint
        tracker, grad_norms, codes = progress.tracker, progress.grad_norms, progress.codes
        wait_start = time.perf_counter()
        for batch in self.batches(epoch):
            clock.data_wait += time.perf_counter() - wait_start
            x = batch["x"] if t.test_mode else self.to_device(batch)
            labels = batch["labels"].to(device, non_blocking=True) if "labels" in batch else None  # the opt-in label head
            label_scale = None if labels is None else torch.tensor(label_multiplier(t.label_schedule, self.step, self.total_steps), device=device)
            metrics, grad_norm, applied = self.train_step(x, labels, label_scale)
            self.step += 1
            progress.batches_done += 1
            clock.samples += x.shape[0] * self.world
            if clock.steady_start is None:  # after the first step: the pipeline's start-up and compile warm-up
                self.wait_for_device()
                clock.steady_start, clock.steady_samples = time.perf_counter(), clock.samples
            self.skips.add(applied)
            tracker.add(metrics, weight=x.shape[0], keep=applied)  # skipped steps stay out of the means
            codes.add(self.train_step.last_indices, keep=applied)
            grad_norms.add({"grad_norm": grad_norm}, weight=1, keep=applied)  # a mean over applied steps
            if self.step % SkippedSteps.CHECK_EVERY == 0:
                self.skips.check(self.step, self.scheduler.get_last_lr()[0], warn=self.rank == 0)
                self.stop_if_requested(epoch, progress)
            maybe_inject_fault(t.inject_fault_at_step, self.step, self.rank, self.run_dir)
            if self.rank == 0 and not t.test_mode and t.log_every and self.step % t.log_every == 0:
                self.log_step(epoch, metrics, grad_norm, clock)
            if t.save_every_steps and not t.test_mode and self.step % t.save_every_steps == 0 \
                    and progress.batches_done < self.steps_per_epoch:  # the epoch's last step has its epoch checkpoint
                self.save_step(epoch, progress)
            wait_start = time.perf_counter()
        self.wait_for_device()
        clock.loop_end = time.perf_counter()
        self.stop_if_requested(epoch, progress)
        self.raw_model.after_epoch()  # e.g. the gaussian bottleneck's k-means fit, identical on every rank
        lr = self.scheduler.get_last_lr()[0]
        record = tracker.compute("train", self.keys, device) | codes.compute("train") | clock.record()
        record["train/lr"] = lr
        record["train/grad_norm"] = grad_norms.compute("train", ["grad_norm"], device).get("train/grad_norm", 0.0)
        record["train/skipped_steps"] = self.skips.check(self.step, lr, warn=self.rank == 0) - progress.skipped_before  # not finite
        if self.rank == 0 and not t.test_mode and (warning := data_wait_warning(record, epoch)):
            print(warning, flush=True)
        return record

    def take_position(self, epoch: int, progress: EpochProgress) -> None:
        """Resumed from a step checkpoint inside `epoch`: this rank's state there put back (after
        the epoch seeded itself), the count of batches it had trained on included."""
        position, self.position = self.position, None
        if position is None or position.epoch != epoch:
            return
        if len(position.ranks) != self.world:  # each rank's data shard and state belong to that many workers
            raise UserError(f"{self.resumed_from} is a step checkpoint of a run with {len(position.ranks)} workers; resume it with "
                            f"--num_workers {len(position.ranks)} (this run has {self.world})")
        restore_rank_state(position.ranks[self.rank], self.raw_model, progress, self.skips, self.device)

    def stop_if_requested(self, epoch: int, progress: EpochProgress) -> None:
        """Every CHECK_EVERY steps and at the end of each epoch (on every rank): when the driver asked
        the run to stop, a step checkpoint here, then StopRequested. Rank 0 asks the ledger (a
        millisecond, once per CHECK_EVERY steps); one small all-reduce makes every rank agree."""
        if self.ledger is None or self.t.test_mode:
            return
        asked = self.rank == 0 and ray.get(self.ledger.stop_requested.remote())  # ray:
        flag = torch.tensor([float(asked)], device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag)
        if not bool(flag.item()):
            return
        self.save_step(epoch, progress)
        if self.rank == 0:
            print(f"[lam] stop requested: saved a step checkpoint at epoch {epoch + 1}, step {self.step}", flush=True)
        raise StopRequested

    def save_step(self, epoch: int, progress: EpochProgress) -> None:
        """A step checkpoint inside `epoch` (every rank calls this at the same step): every rank's
        state gathered on rank 0, which writes it with the model; reported to Ray Train with the
        worst score, so `keep_best` never keeps it once a newer checkpoint exists."""
        self.wait_for_device()
        ranks = gather_rank_states(rank_state(self.raw_model, progress, self.skips, self.device))
        state = None
        if self.rank == 0:
            self.logger.flush()  # the step records so far: a resume keeps those up to this step
            if state_is_finite(self.raw_model):
                position = EpochPosition(epoch, progress.batches_done, ranks)
                state = dict(model=self.raw_model.state_dict(), optimizer=optimizer_state(self.raw_model, self.optimizer),
                             scheduler=self.scheduler.state_dict(), epoch=epoch - 1, step=self.step, config=self.cfg.to_dict(),
                             metrics={}, position=position.to_dict())
            else:
                print(f"[lam] warning: step {self.step}: not saving a step checkpoint: the weights are not finite", flush=True)
        name = new_checkpoint_name(self.run_dir, epoch, self.step) if state is not None else None  # rank 0's name is every rank's
        record = {"epochs_done": epoch, "step": self.step, "checkpoint_score": STEP_CHECKPOINT_SCORE}  # a step report, not an epoch's
        self.checkpoint_stall = saving.report(record, state, self.run_dir, name, self.t.checkpoint_upload)

    def log_step(self, epoch: int, metrics: dict, grad_norm, clock: EpochClock) -> None:
        """Rank 0, every `log_every` steps: the step's metrics to the log, a progress line to the console."""
        t = self.t
        self.wait_for_device()
        rate = clock.samples / max(time.time() - clock.start, 1e-9)
        remaining = (self.total_steps - self.step) * t.batch_size / max(rate, 1e-9)
        lr = self.scheduler.get_last_lr()[0]
        self.logger.log({step_metric_name(k): float(v) for k, v in metrics.items()} | {"train/lr": lr, "train/grad_norm": float(grad_norm)}, self.step)
        print(f"[lam] epoch {epoch + 1}/{t.num_epochs} step {self.step}/{self.total_steps} loss {float(metrics['loss']):.4f} "
              f"mse {float(metrics['mse_loss']):.4f} {rate:.1f} samples/s ETA {format_eta(remaining)}", flush=True)

    def validate(self, epoch: int) -> dict:
        """The epoch's checks after training: health, validation, bad windows, the overfit batch
        (test mode) or the action-quality check every `eval_every` epochs."""
        t, device = self.t, self.device
        record = {"epoch": epoch + 1, "ddp/params_in_sync": float(params_in_sync(self.raw_model, device))}
        if self.checkpoint_stall is not None:
            record["checkpoint/stall_s"] = self.checkpoint_stall  # the previous checkpoint's
        if device.type == "cuda":
            record["train/peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        if self.has_val:
            val_keys = [k for k in self.keys if not k.startswith("label_")]  # val files are never read for labels
            record |= evaluate(self.model, self.data.val(epoch), val_keys, device, self.autocast, self.to_device,
                               CodeCounter(self.cfg.model.num_codes, self.cfg.model.num_embeddings, device))
        if self.rank == 0 and self.ledger is not None:
            record["data/skipped_windows"] = report_bad_windows(ray.get(self.ledger.take_bad_windows.remote(epoch)), epoch)  # ray:
        if t.test_mode:
            record |= evaluate_batch(self.model, self.fixed_batch, self.keys, device, self.autocast)
        elif self.eval_manifest is not None and (epoch + 1) % t.eval_every == 0:
            quality, collapse = action_quality(self.raw_model, self.cfg, self.eval_manifest, device)
            record |= quality
            for warning in collapse:  # e.g. every transition shares one action id
                print(f"[lam] warning: epoch {epoch + 1}: {warning}", flush=True)
        return record

    # ------------------------------------------------------------------ report + checkpoint

    def report(self, epoch: int, record: dict) -> None:
        """Log the epoch (rank 0), and hand Ray Train its record with a checkpoint when one is due
        and healthy: a poisoned checkpoint must never be registered (and evict a good one)."""
        t = self.t
        last = epoch + 1 == t.num_epochs
        is_log_point = not t.test_mode or last or (t.log_every and (epoch + 1) % t.log_every == 0)
        save = last or (not t.test_mode and (epoch + 1) % t.save_every == 0)
        if not (is_log_point or save):
            return
        score = checkpoint_score(record, t.checkpoint_metric, t.checkpoint_mode)
        record["checkpoint_score"] = score
        state = None
        if self.rank == 0:
            self.logger.log({k: v for k, v in record.items() if k != "checkpoint_score"}, self.step)
            self.logger.flush()
            print(f"[lam] epoch {epoch + 1}/{t.num_epochs} done: {epoch_summary(record)} | elapsed {format_eta(time.time() - self.run_start)}",
                  flush=True)
            healthy = score is not None and math.isfinite(score) and state_is_finite(self.raw_model)
            if save and not healthy:
                why = f"this epoch has no {t.checkpoint_metric}" if score is None else f"the weights or the score ({score}) are not finite"
                print(f"[lam] warning: epoch {epoch + 1}: not saving a checkpoint: {why}", flush=True)
            elif save:
                state = dict(model=self.raw_model.state_dict(), optimizer=optimizer_state(self.raw_model, self.optimizer), scheduler=self.scheduler.state_dict(),
                             epoch=epoch, step=self.step, config=self.cfg.to_dict(),
                             metrics={k: float(v) for k, v in record.items()})  # plain floats: weights_only loads them
        name = new_checkpoint_name(self.run_dir, epoch + 1) if state is not None else None  # rank 0's name is every rank's
        held_up = saving.report(record, state, self.run_dir, name, t.checkpoint_upload)
        if state is not None:  # how long training waited for this checkpoint (its upload may go on): in the next record
            self.checkpoint_stall = held_up

    def finish(self) -> None:
        if self.data is not None:
            self.data.close()  # stopped early: its reads stop too
        if self.start_epoch >= self.t.num_epochs and self.saved_record:
            # Resumed after the last epoch (e.g. a sweep interrupted just as this run ended):
            # nothing to train, but the caller (Tune, `lam train`) still gets the final metrics.
            ray.train.report(self.saved_record)  # ray:
        if self.logger is not None:
            self.logger.close()


def resolve_precision(precision: str, device: torch.device):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


# The Ray Train module whose logger prints every report's full metrics at INFO, under its file's
# name: LoggingConfig does not reach it. A private module, so only looked up, never imported:
# when a Ray release moves it, the lines come back and nothing breaks.
RAY_REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"


def quiet_per_report_logs() -> None:
    """Ray Train's per-report log lines at WARNING: our own per-epoch line says the same, once."""
    spec = importlib.util.find_spec(RAY_REPORT_LOGGER_MODULE)
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)
