"""The train section of a run's config (optimisation, scale-out, faults, checkpoints, logging) and a sweep's settings."""

from __future__ import annotations

from dataclasses import dataclass

from lam.config.options import option
from lam.errors import UserError

# The schedules of `lam.train.schedule.label_multiplier`, named here so that the config needs no training code.
LABEL_SCHEDULES = ("constant", "decay", "warmup")
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs")

# Metrics of the periodic action check (`eval_every`), not of every epoch.
ACTION_CHECK_METRICS = ("val/delta_psnr", "val/nmi", "val/code_map_accuracy")

TRAINING, SCALING, OUTPUTS = "training", "scaling", "outputs and logging"


@dataclass
class TrainConfig:
    batch_size: int = option(32, "windows per optimiser step, across all workers", group=TRAINING)
    num_epochs: int = option(100, "passes over the training windows", group=TRAINING)
    learning_rate: float = option(1e-4, "peak learning rate (AdamW)", group=TRAINING)
    weight_decay: float = option(0.01, "AdamW weight decay", group=TRAINING)
    warmup_steps: int = option(500, "steps of linear warm-up, then cosine decay", group=TRAINING)
    min_lr_ratio: float = option(0.1, "the cosine decay ends at this fraction of learning_rate", group=TRAINING)
    grad_clip: float = option(1.0, "max global gradient norm (the pre-clip norm is logged as train/grad_norm)", group=TRAINING)
    precision: str = option("auto", "fp32 | bf16 | auto (bf16 on GPUs that support it, else fp32)", group=TRAINING)
    compile: bool = option(False, "torch.compile the model (on CPU the first steps compile kernels: minutes)", group=TRAINING)
    compile_mode: str = option("default", "torch.compile's mode with compile on: default | max-autotune (tuned kernels and CUDA graphs: "
                               "a longer warm-up, fewer launches) | max-autotune-no-cudagraphs", group=TRAINING, choices=COMPILE_MODES)
    max_nonfinite_steps: int = option(20, "skip a step whose loss or gradient is not finite; stop the run after this many in a row", group=TRAINING)
    max_bad_windows: int = option(100, "skip a window that cannot be read (NaN/Inf, damaged chunks) with a warning; stop the run past this many ('fail' or 0: at the first)",
                                  group=TRAINING, aliases={"fail": 0})
    augment_shift: int = option(0, "roll each training window by a random offset of up to this many latent pixels, the same for all its frames (0: none)", group=TRAINING)
    augment_crop: float = option(0.0, "cut each training window to a random box keeping at least 1 - this of each side, the same for all "
                                 "its frames, resized back (0: none)", group=TRAINING)
    augment_gain: float = option(0.0, "scale each latent channel of a training window by 1 + u and offset it by v times its std, u and v "
                                 "uniform in +-this, the same for all its frames (a colour change; 0: none)", group=TRAINING)
    label_fraction: float = option(0.0, "opt-in, not unsupervised: the fraction of train transitions, spread over every train file, whose true actions train a linear head on the action vector (0: none; val and test files are never read for it)",
                                   group=TRAINING)
    label_schedule: str = option("constant", "how the label head's weight changes over the run: constant | decay (from label_weight to 0, a "
                                 "half cosine) | warmup (from 0 to label_weight over the first half)", group=TRAINING,
                                 choices=LABEL_SCHEDULES)
    seed: int = option(0, "seed of everything a run draws: initial weights, the data order of every epoch, dropout", group=TRAINING)
    test_mode: bool = option(False, "the spec's overfit check: train on one batch, PASS when MSE < 0.01 and MAE < 0.05", group=TRAINING)
    num_workers: int = option(1, "DDP workers (processes), one GPU each with --use_gpu", group=SCALING)
    use_gpu: bool = option(False, "train on GPUs (NCCL); otherwise CPUs (gloo)", group=SCALING)
    cpus_per_worker: float = option(1.0, "CPUs per worker, also its torch thread count; on a CPU machine use cores / num_workers", group=SCALING)
    read_batch_size: int = option(0, "windows per Ray Data block; 0: one per-worker batch, so a batch is one block", group=SCALING)
    prefetch_batches: int = option(0, "batches each worker reads ahead of the training step; 0: as many as fill 256 MiB (at least 2)",
                                   group=SCALING)
    max_failures: int = option(0, "restarts from the last checkpoint when a worker dies", group=SCALING)
    inject_fault_at_step: int = option(0, "fail once in rank 0 at this step, to exercise --max_failures (0: never)", group=SCALING)
    run_name: str = option("", "run folder under storage_path, empty: a timestamp; re-use a name to resume that run", group=OUTPUTS)
    storage_path: str = option("./runs", "where runs go: a local folder or a URI (s3://..., gs://...)", group=OUTPUTS)
    save_every: int = option(5, "epochs between checkpoints (and always at the end)", group=OUTPUTS)
    save_every_steps: int = option(0, "optimizer steps between step checkpoints inside an epoch (0: off): a run stopped mid-epoch "
                                   "resumes at the last one, exactly where it was; kept until the next one", group=OUTPUTS)
    checkpoint_upload: str = option("async", "async: training waits only for a copy of the state in memory, the file is written and copied "
                                    "into the run directory in the background | sync: before the next step", group=OUTPUTS)
    keep_best: int = option(3, "checkpoints kept, the best by checkpoint_metric (the latest is always kept too)", group=OUTPUTS)
    checkpoint_metric: str = option("val/loss", "the epoch metric that ranks checkpoints for keep_best, e.g. val/loss, val/delta_psnr (an "
                                    "action check: eval_every must divide save_every), val/action_perplexity, val/code_map_accuracy "
                                    "(val files with true actions)", group=OUTPUTS)
    checkpoint_mode: str = option("min", "whether checkpoint_metric is better low (min) or high (max)", group=OUTPUTS, choices=("min", "max"))
    log_every: int = option(10, "steps between progress lines and metric records inside an epoch", group=OUTPUTS)
    eval_every: int = option(1, "epochs between action-quality checks on val (delta-t PSNR, NMI); 0: never", group=OUTPUTS)
    wandb_project: str = option("vvae-lam", "wandb project", group=OUTPUTS)
    wandb_mode: str = option("auto", "online | offline | disabled | auto (online when an API key is configured)", group=OUTPUTS)
    wandb_group: str = option("", "wandb group (a sweep puts its trials in one)", group=OUTPUTS)


@dataclass
class SweepConfig:
    """A `lam tune` sweep: which space, how many trials, and ASHA's schedule (the trials' own
    config is a RunConfig)."""

    search_space: str = option("", "search space YAML; empty: lam/tune/default_space.yaml")
    name: str = option("", "sweep name, a folder under storage_path; empty: tune-DATE-TIME")
    num_samples: int = option(1, "samples of the space (grid keys: repeats of the grid)")
    max_epochs: int = option(10, "epochs per trial, ASHA's max_t")
    grace_period: int = option(1, "epochs before ASHA may stop a trial")
    reduction_factor: int = option(2, "ASHA keeps the best 1/reduction_factor of the trials at each rung")
    metric: str = option("val/mse_loss", "metric ASHA compares, an epoch metric; one of the action check's (val/delta_psnr, "
                                          "val/nmi, val/code_map_accuracy) makes every trial run that check every epoch")
    mode: str = option("min", "whether the metric is better low or high", choices=("min", "max"))
    max_concurrent_trials: int = option(0, "trials at once; 0: as many as the cluster's CPUs (GPUs) hold now")
    search_seed: int = option(0, "seed of the random draws of the space")
    resume: bool = option(False, "continue the sweep named by --name (finished trials are kept)")

    def validate(self) -> "SweepConfig":
        checks = [
            (self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}"),
            (self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}"),
            (1 <= self.grace_period <= self.max_epochs, f"grace_period must be in 1..max_epochs ({self.max_epochs}), got {self.grace_period}"),
            (self.reduction_factor >= 2, f"reduction_factor must be >= 2, got {self.reduction_factor}"),
            (self.mode in ("min", "max"), f"mode must be min or max, got {self.mode!r}"),
            (self.max_concurrent_trials >= 0, f"max_concurrent_trials must be >= 0, got {self.max_concurrent_trials}"),
            (not self.resume or self.name, "--resume needs --name (the sweep to continue)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self
