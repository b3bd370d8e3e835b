"""What a training run checks on its own model after each epoch: the val split's metrics on every
rank, the overfit batch in test mode, and rank 0's quick action-quality check."""

from __future__ import annotations

import torch

from lam.config import RunConfig
from lam.eval.evaluate import evaluate_windows, split_batches, summarize
from lam.train.metrics import CodeCounter, MeanTracker


@torch.no_grad()
def evaluate(model, batches, keys, device, autocast, to_device, codes: CodeCounter) -> dict:
    """Validation metrics over this worker's `batches`, averaged over all ranks; code usage,
    perplexity and ids used counted over the whole split (`codes`), as for training."""
    model.eval()
    tracker = MeanTracker()
    for batch in batches:
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
