"""The ceiling of action quality: an inverse-dynamics model trained *with* the true actions.

A small CNN reads one transition, the latent frames z[t-1] and z[t] and their difference,
and predicts the true action held during frame t. It is trained on the train split's
transitions, early-stopped on the val split's accuracy, and scored on the test split,
the same split by file that the latent action model is scored on. What it reaches is
what these latents allow a supervised model of this size to know about the actions; an
unsupervised model's probe accuracy is read as a fraction of the gap between an
untrained model (the floor) and this.

    from bench.idm import fit_inverse_dynamics
    result = fit_inverse_dynamics(manifest, seed=0)   # {"test_accuracy": ..., "val_accuracy": ..., ...}
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from lam.data.manifest import Manifest


def transitions(manifest: Manifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every transition t-1 -> t (t >= 1) of the split's files: frames (n, 2, C, H, W) float16
    and the true action of frame t (n,) int64. Files without `actions` are an error."""
    pairs, labels = [], []
    for rel in manifest.split_files(split):
        path = Path(manifest.data_dir) / rel
        with h5py.File(path, "r") as f:
            if "actions" not in f:
                raise ValueError(f"{path}: no `actions` dataset; the ceiling needs the true actions")
            latents = np.asarray(f[manifest.dataset_key][()], dtype=np.float16)  # (N, C, 2, H, W)
            actions = np.asarray(f["actions"][()]).reshape(-1).astype(np.int64)  # (2N,)
        z = latents.transpose(0, 2, 1, 3, 4).reshape(-1, *latents.shape[1:2], *latents.shape[3:])  # (2N, C, H, W)
        pairs.append(np.stack([z[:-1], z[1:]], axis=1))  # (2N-1, 2, C, H, W)
        labels.append(actions[1:])
    return np.concatenate(pairs), np.concatenate(labels)


class InverseDynamics(nn.Module):
    """(z[t-1], z[t]) -> action logits: three strided convolutions over the two frames and
    their difference, global average pooling, a linear layer."""

    def __init__(self, channels: int, num_actions: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3 * channels, width, 4, stride=2, padding=1), nn.GELU(),  # 64 -> 32
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.GELU(),  # -> 16
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.GELU(),  # -> 8
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_actions),
        )

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        prev, nxt = pairs[:, 0].float(), pairs[:, 1].float()  # (B, C, H, W)
        return self.net(torch.cat([prev, nxt, nxt - prev], dim=1))


@torch.no_grad()
def accuracy(model: nn.Module, pairs: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    model.eval()
    hits = 0
    for lo in range(0, len(labels), batch):
        logits = model(torch.from_numpy(pairs[lo : lo + batch]))
        hits += int((logits.argmax(1).numpy() == labels[lo : lo + batch]).sum())
    return hits / max(1, len(labels))


def fit_inverse_dynamics(manifest: Manifest, seed: int = 0, max_steps: int = 3000, eval_every: int = 50, patience: int = 8,
                         batch_size: int = 32, lr: float = 1e-3, minutes: float = 5.0, progress: bool = True) -> dict:
    """Train on the train split in batches drawn with replacement, check the val accuracy every
    `eval_every` steps, keep the best (stop after `patience` checks without a better one, at
    `max_steps`, or at `minutes`), and score it on the test split."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_x, train_y = transitions(manifest, "train")
    val_x, val_y = transitions(manifest, "val")
    test_x, test_y = transitions(manifest, "test")
    num_actions = int(max(train_y.max(), val_y.max(), test_y.max())) + 1
    model = InverseDynamics(train_x.shape[2], num_actions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    best = {"val_accuracy": -1.0, "step": 0, "state": None}
    stopped = "max_steps"
    start = time.time()
    for step in range(1, max_steps + 1):
        model.train()
        sel = rng.integers(0, len(train_y), size=min(batch_size, len(train_y)))
        loss = nn.functional.cross_entropy(model(torch.from_numpy(train_x[sel])), torch.from_numpy(train_y[sel]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every and step != max_steps:
            continue
        val_acc = accuracy(model, val_x, val_y)
        if val_acc > best["val_accuracy"]:
            best = {"val_accuracy": val_acc, "step": step, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        if progress:
            print(f"[idm] step {step}: val accuracy {val_acc:.3f} (best {best['val_accuracy']:.3f} at {best['step']})", flush=True)
        if step - best["step"] >= patience * eval_every:
            stopped = "patience"
            break
        if time.time() - start > 60 * minutes:
            stopped = "time"
            break
    model.load_state_dict(best["state"])
    return {
        "test_accuracy": accuracy(model, test_x, test_y),
        "val_accuracy": best["val_accuracy"],
        "best_step": best["step"],
        "steps_run": step,
        "stopped": stopped,  # patience: it stopped improving; time or max_steps: it may have had more to learn
        "minutes": minutes,  # the time cap it ran under
        "transitions": {"train": len(train_y), "val": len(val_y), "test": len(test_y)},
        "seconds": time.time() - start,
    }
