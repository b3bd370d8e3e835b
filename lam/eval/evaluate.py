"""Do the latent actions mean anything? Evaluate a checkpoint on a split.

Every transition z[t-1] -> z[t] of the split is scored exactly once: each file is tiled
with windows of the run's `sequence_length` (T) frames that share one frame
(`lam.eval.tiling`, as `lam export-actions` does). Measured:
- next-frame MSE, MAE, PSNR of the model (teacher-forced, inferred actions) and of
  a copy-last-frame baseline, so the numbers have a reference;
- rollout error for horizons h = 1..T-1: from ground-truth frame 0 of each window,
  the model feeds its own predictions back, using the inferred actions;
- controllability (Genie's delta-t PSNR): PSNR of the rollout at horizon h with the
  inferred actions minus PSNR with random actions (each code uniform over the
  codebook). ~0 means the decoder ignores the actions; > 0 means they steer it;
- codebook usage, perplexity, the number of action ids used and their distribution;
- with ground-truth `actions` in the files (`lam.eval.scores`): NMI, probes against chance
  and against frame-only probes (the leakage control), k-means ids of the pre-quantisation
  vectors, and the bootstrap std of each score;
- per group of files (`--group_by REGEX` on file paths, or the manifest's per-file
  `group`): files, transitions, ids used and the same ground-truth scores;
- `warnings`: collapse in plain words (`lam.eval.report.collapse_warnings`).

PSNR peak: the range (max - min) of the evaluated target latents, one number for
the whole split (the report states it); PSNR = 10 log10(peak^2 / MSE) from the
MSE pooled over all evaluated frames.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from lam.data.h5 import true_actions
from lam.data.manifest import Manifest, load_manifest
from lam.data.windows import WindowReader, frame_count
from lam.errors import UserError
from lam.eval import metrics as M
from lam.eval.probes import pool_frames
from lam.eval.report import collapse_warnings, print_report  # noqa: F401  (callers print through here)
from lam.eval.scores import group_scores, label_scores
from lam.eval.tiling import transition_windows
from lam.model import LatentActionModel
from lam.runtime.checkpoint import load_model

TILING = "every transition once: windows of T frames that share one frame"


def action_names(path: str | Path) -> list[str] | None:
    """The names of a file's true actions (its `action_names` attribute, e.g. stay/up/down/...), or None."""
    with h5py.File(path, "r") as f:
        names = f.attrs.get("action_names")
    return None if names is None else [n.decode() if isinstance(n, bytes) else str(n) for n in names]


@dataclass
class Accumulator:
    """Sums over all evaluated windows, and one entry per scored transition; turned into the report at the end."""

    horizons: int
    n_frames: int = 0  # scored transitions
    n_windows: int = 0
    sq_err: float = 0.0
    abs_err: float = 0.0
    base_sq_err: float = 0.0
    base_abs_err: float = 0.0
    vmin: float = math.inf
    vmax: float = -math.inf
    roll_sq: np.ndarray = None  # (H,) summed per-frame MSE with inferred actions
    rand_sq: np.ndarray = None  # (H,) with random actions
    ids: list = field(default_factory=list)  # per scored transition, in batch order
    files: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    z_pre: list = field(default_factory=list)
    frames_prev: list = field(default_factory=list)  # pooled frame t-1 (leakage control)
    frames_next: list = field(default_factory=list)  # pooled frame t

    def __post_init__(self):
        self.roll_sq = np.zeros(self.horizons)
        self.rand_sq = np.zeros(self.horizons)


@torch.no_grad()
def evaluate_windows(model: LatentActionModel, batches, seed: int = 0, keep_features: bool = True) -> Accumulator:
    """Run the model over `batches` of (x [B,T,C,H,W] float32, labels [B,T-1] or None, file ids [B][, counted [B,T-1] bool]).

    `counted` marks the transitions to score (a window moved back to the end of its file
    repeats some); without it every transition counts. Rollouts use every window.
    Random actions for controllability come from a generator seeded with `seed`.
    `keep_features` keeps the pre-quantisation vectors and pooled frames for the probes.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    acc = None
    for batch in batches:
        x, labels, file_ids = batch[:3]
        b, t = x.shape[:2]
        counted = torch.ones(b, t - 1, dtype=torch.bool) if len(batch) < 4 else torch.as_tensor(batch[3], dtype=torch.bool)
        if acc is None:
            acc = Accumulator(horizons=t - 1)
        mask = counted.to(x.device)  # (B, T-1)
        flat = counted.reshape(-1).numpy()  # (B*(T-1),)
        target = x[:, 1:]
        indices, z_pre = model.encode_actions(x)  # (B, T-1, K), (B, T-1, K, D)
        pred = model.decode_with_actions(x, indices)
        acc.n_frames += int(flat.sum())
        acc.n_windows += b
        acc.sq_err += float((pred - target).pow(2).mean(dim=(2, 3, 4))[mask].sum())
        acc.abs_err += float((pred - target).abs().mean(dim=(2, 3, 4))[mask].sum())
        acc.base_sq_err += float((x[:, :-1] - target).pow(2).mean(dim=(2, 3, 4))[mask].sum())
        acc.base_abs_err += float((x[:, :-1] - target).abs().mean(dim=(2, 3, 4))[mask].sum())
        scored = target[mask]  # (n, C, H, W)
        if scored.numel():
            acc.vmin, acc.vmax = min(acc.vmin, float(scored.min())), max(acc.vmax, float(scored.max()))

        h = acc.horizons
        random_idx = torch.randint(0, cfg.num_embeddings, indices[:, :h].shape, generator=gen).to(indices.device)
        rolled = model.rollout(x[:, :1], indices[:, :h], h)  # frames 1..h from frame 0
        rolled_rand = model.rollout(x[:, :1], random_idx, h)
        acc.roll_sq += (rolled - target[:, :h]).pow(2).mean(dim=(2, 3, 4)).sum(0).cpu().numpy()
        acc.rand_sq += (rolled_rand - target[:, :h]).pow(2).mean(dim=(2, 3, 4)).sum(0).cpu().numpy()

        acc.ids.append(model.action_ids(indices).reshape(-1).cpu().numpy()[flat])
        acc.files.append(np.repeat(np.asarray(file_ids), t - 1)[flat])
        if keep_features:
            acc.z_pre.append(z_pre.reshape(b * (t - 1), -1).cpu().numpy()[flat])
            acc.frames_prev.append(pool_frames(x[:, :-1].flatten(0, 1))[flat])
            acc.frames_next.append(pool_frames(target.flatten(0, 1))[flat])
        if labels is not None:
            acc.labels.append(np.asarray(labels).reshape(-1)[flat])
    if acc is None:
        raise ValueError("no windows to evaluate")
    return acc


def summarize(acc: Accumulator, num_actions: int, seed: int = 0, file_groups=None, bootstrap: int = 200) -> dict:
    """The report: plain floats and lists, ready for JSON.

    `file_groups[i]` names the group of file id i (None: no groups). `bootstrap`: resamples
    for the std of the ground-truth scores (0: none). The top level holds `action_ids_used`
    and `warnings` (`collapse_warnings`), which the training loop reads.
    """
    peak = acc.vmax - acc.vmin
    mse, mae = acc.sq_err / acc.n_frames, acc.abs_err / acc.n_frames
    base_mse, base_mae = acc.base_sq_err / acc.n_frames, acc.base_abs_err / acc.n_frames
    roll_mse = acc.roll_sq / acc.n_windows
    rand_mse = acc.rand_sq / acc.n_windows
    psnr = lambda m: M.psnr_from_mse(m, peak)  # noqa: E731
    ids = np.concatenate(acc.ids)
    usage = M.code_usage(ids, num_actions)
    report = {
        "windows": acc.n_windows,
        "transitions": acc.n_frames,
        "psnr_peak": peak,
        "psnr_peak_definition": "max - min of the evaluated target latents",
        "next_frame": {"mse": mse, "mae": mae, "psnr": psnr(mse)},
        "copy_last_baseline": {"mse": base_mse, "mae": base_mae, "psnr": psnr(base_mse)},
        "rollout": [
            {
                "horizon": h + 1,
                "mse": float(roll_mse[h]),
                "psnr": psnr(roll_mse[h]),
                "mse_random_actions": float(rand_mse[h]),
                "psnr_random_actions": psnr(rand_mse[h]),
                "delta_psnr": psnr(roll_mse[h]) - psnr(rand_mse[h]),
            }
            for h in range(len(roll_mse))
        ],
        "codebook": {
            "num_action_ids": int(num_actions),
            "action_usage": usage["usage"],
            "action_perplexity": usage["perplexity"],
            "distinct_actions": usage["num_used"],
            "action_histogram": {int(i): int(c) for i, c in enumerate(usage["histogram"]) if c},
        },
        "action_ids_used": usage["num_used"],
    }
    report["delta_psnr"] = report["rollout"][0]["delta_psnr"]

    files = np.concatenate(acc.files)
    labels = np.concatenate(acc.labels) if acc.labels else None
    if labels is not None and labels.size != ids.size:
        labels = None  # some batches had no labels: no ground truth rather than misaligned scores
    feats = {name: np.concatenate(parts) if parts else None
             for name, parts in (("z_pre", acc.z_pre), ("frames_prev", acc.frames_prev), ("frames_next", acc.frames_next))}
    shape = {"num_ids": num_actions, "num_rows": int(ids.max()) + 1, "seed": seed, "bootstrap": bootstrap}
    if labels is not None:
        report["ground_truth"] = label_scores(ids, labels, files, **feats, **shape)
        shape["num_labels"] = report["ground_truth"]["num_true_actions"]
    if file_groups is not None:
        groups = np.asarray([str(g) for g in file_groups], dtype=object)[files]
        report["groups"] = group_scores(groups, ids, labels, files, **feats, **shape)
    report["warnings"] = collapse_warnings(report)
    return report


class SplitBatches:
    """(x, labels, file ids, counted) batches that score every transition of a split once.

    Each file is tiled with `transition_windows`; `counted` [B, T-1] marks the transitions
    a window adds (a window moved back to the end of its file repeats some). `files` lists
    the split's files (file id i is `files[i]`). Files shorter than T are skipped with a warning.
    `max_windows` evaluates a random (seeded) subset of the windows. A window that cannot be
    read raises its DataError, or with `skip_bad` is left out (counted in `skipped`).
    """

    def __init__(self, sequence_length: int, manifest: Manifest, split: str, batch_size: int,
                 max_windows: int | None = None, device="cpu", skip_bad: bool = False):
        self.T, self.manifest, self.batch_size, self.device = sequence_length, manifest, batch_size, device
        self.skip_bad, self.skipped = skip_bad, 0
        self.files, rows, too_short = [], [], []
        for rel in manifest.split_files(split):
            n = frame_count(manifest, rel)
            if n < sequence_length:
                too_short.append(f"{rel} ({n} latent frames)")
                continue
            rows += [(len(self.files), start, first) for start, _, first in transition_windows(n, sequence_length)]
            self.files.append(rel)
        if too_short:
            warnings.warn(f"skipping {len(too_short)} file(s) of split '{split}' shorter than one window of {sequence_length} "
                          "latent frames: " + ", ".join(too_short[:5]) + (" ..." if len(too_short) > 5 else ""), stacklevel=2)
        if not rows:
            raise UserError(f"split '{split}' of {manifest.path or 'the manifest'} has no window of {sequence_length} latent "
                            f"frames ({len(manifest.split_files(split))} files); use more files or a shorter --sequence_length")
        self.windows = np.asarray(rows, dtype=np.int64)  # (W, 3): file id, start, first counted t
        if max_windows is not None and max_windows < len(self.windows):
            self.windows = self.windows[np.random.default_rng(0).permutation(len(self.windows))[:max_windows]]

    def __iter__(self):
        T, m = self.T, self.manifest
        reader = WindowReader(m.data_dir, T, m.dataset_key, m.latent_shape)
        labels_by_file = {rel: true_actions(Path(m.data_dir) / rel) for rel in self.files}
        has_labels = all(v is not None for v in labels_by_file.values())
        try:
            for lo in range(0, len(self.windows), self.batch_size):
                file_ids, starts, first = self.windows[lo : lo + self.batch_size].T
                files = [self.files[i] for i in file_ids]
                bad = []
                x = torch.from_numpy(reader.read_batch(files, starts, on_error=(lambda i, *_: bad.append(i)) if self.skip_bad else None)).to(self.device)
                if bad:
                    keep = np.setdiff1d(np.arange(len(files)), bad)
                    file_ids, starts, first, files = file_ids[keep], starts[keep], first[keep], [files[i] for i in keep]
                    self.skipped += len(bad)
                    if not len(keep):
                        continue
                t = starts[:, None] + np.arange(1, T)  # (B, T-1): transition j of a window is t = start + 1 + j
                labels = np.stack([labels_by_file[f][s + 1 : s + T] for f, s in zip(files, starts)]) if has_labels else None
                yield x, labels, file_ids, torch.from_numpy(t >= first[:, None])
        finally:
            reader.close()


def figure_windows(sequence_length: int, manifest: Manifest, split: str, count: int = 16, device="cpu",
                   seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """`count` windows (count, T, C, H, W) for the figures and the file of each: from as many of the
    split's files as it has, each at a seeded random place. Consecutive windows of one video show
    one place at one moment, so whatever sits still there (an agent, a pointer) looked like a fixed
    pattern of the model's in every panel."""
    batches = SplitBatches(sequence_length, manifest, split, batch_size=count, device=device)
    rng = np.random.default_rng(seed)
    per_file = [rng.permutation(np.flatnonzero(batches.windows[:, 0] == f)).tolist() for f in range(len(batches.files))]
    files = rng.permutation(len(per_file)).tolist()
    rows = []
    while len(rows) < count and any(per_file[f] for f in files):
        rows += [per_file[f].pop() for f in files if per_file[f]][: count - len(rows)]  # one window a file a round
    batches.windows = batches.windows[np.asarray(rows)]
    return torch.cat([batch[0] for batch in batches]), [batches.files[f] for f in batches.windows[:, 0]]


def split_batches(sequence_length: int, manifest: Manifest, split: str, batch_size: int, max_windows: int | None = None,
                  device="cpu", skip_bad: bool = False) -> SplitBatches:
    """The split's evaluation batches; see `SplitBatches`."""
    return SplitBatches(sequence_length, manifest, split, batch_size, max_windows, device, skip_bad)


def group_pattern(group_by: str) -> re.Pattern:
    """`--group_by` compiled; a bad pattern is a user error."""
    try:
        return re.compile(group_by)
    except re.error as e:
        raise UserError(f"--group_by {group_by!r} is not a regular expression: {e}") from None


def file_groups(manifest: Manifest, files: list[str], group_by: str | None = None) -> tuple[list[str] | None, str | None]:
    """(group name per file, where the names come from), or (None, None) without groups.

    With `group_by`, a regular expression searched in each file's relative path: the first
    capture group names the group (the whole match when the pattern has none); files that
    do not match are "other". Otherwise the manifest's per-file `group` field when any file
    has one (files without it: "other").
    """
    if group_by:
        pattern = group_pattern(group_by)
        names = []
        for rel in files:
            match = pattern.search(rel)
            name = (match.group(1) if pattern.groups and match.group(1) is not None else match.group(0)) if match else ""
            names.append(name or "other")
        return names, f"--group_by {group_by}"
    meta = [manifest.files.get(rel, {}).get("group") for rel in files]
    if any(g is not None for g in meta):
        return [str(g) if g is not None else "other" for g in meta], "the manifest's per-file 'group'"
    return None, None


def evaluate_checkpoint(checkpoint, data_dir, manifest_path, split="test", batch_size=16, max_windows=None, out_dir=None,
                        device="cpu", seed=0, figures=True, group_by=None, bootstrap=200) -> dict:
    if group_by:
        group_pattern(group_by)  # a bad pattern fails before the model loads
    model, cfg = load_model(checkpoint, device)
    manifest = load_manifest(manifest_path, data_dir)
    T = cfg.data.sequence_length
    batches = split_batches(T, manifest, split, batch_size, max_windows, device)
    groups, group_source = file_groups(manifest, batches.files, group_by)
    acc = evaluate_windows(model, batches, seed=seed)
    report = summarize(acc, cfg.model.num_actions, seed=seed, file_groups=groups, bootstrap=bootstrap)
    report.update({"checkpoint": str(checkpoint), "split": split, "sequence_length": T, "tiling": TILING})
    if group_source:
        report["group_source"] = group_source
    names = action_names(Path(manifest.data_dir) / batches.files[0])
    if names and "ground_truth" in report:
        report["ground_truth"]["action_names"] = names
    out_dir = Path(out_dir) if out_dir else Path(checkpoint).parent / f"eval_{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures:
        x, _ = figure_windows(T, manifest, split, device=device, seed=seed)
        from lam.eval.figure_set import write_figures  # matplotlib: loaded only where figures are drawn

        report["figures"] = write_figures(model, x, report, out_dir, split)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(out_dir / "report.json")
    return report
