"""Do the latent actions mean anything? Evaluate a checkpoint on a split.

Measured on non-overlapping windows of the run's `sequence_length` (T) frames:
- next-frame MSE, MAE, PSNR of the model (teacher-forced, inferred actions) and of
  a copy-last-frame baseline, so the numbers have a reference;
- rollout error for horizons h = 1..T-1: from ground-truth frame 0 of a window,
  the model feeds its own predictions back, using the inferred actions;
- controllability (Genie's delta-t PSNR): PSNR of the rollout at horizon h with the
  inferred actions minus PSNR with random actions (each code uniform over the
  codebook). ~0 means the decoder ignores the actions; > 0 means they steer it;
- codebook usage, perplexity and the distribution of action ids;
- with ground-truth `actions` in the files: NMI between action ids and true
  actions, a code -> true-action map fitted on half of the files (by file) and
  scored on the rest, a linear probe on the pre-quantization vectors, and the
  majority-class chance level.

PSNR peak: the range (max - min) of the evaluated target latents, one number for
the whole split (the report states it); PSNR = 10 log10(peak^2 / MSE) from the
MSE pooled over all evaluated frames.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from lam.data.manifest import load_manifest
from lam.data.windows import WindowReader, build_window_index
from lam.eval import figures as F
from lam.eval import metrics as M
from lam.model import LatentActionModel
from lam.runtime.checkpoint import load_model


def true_actions(path: str | Path) -> np.ndarray | None:
    """A file's ground-truth action per latent frame (flattened `[N, 2]` -> `[2N]`), or None."""
    with h5py.File(path, "r") as f:
        if "actions" not in f:
            return None
        return np.asarray(f["actions"][()]).reshape(-1).astype(np.int64)


def action_names(path: str | Path) -> list[str] | None:
    """The names of a file's true actions (its `action_names` attribute, e.g. stay/up/down/...), or None."""
    with h5py.File(path, "r") as f:
        names = f.attrs.get("action_names")
    return None if names is None else [n.decode() if isinstance(n, bytes) else str(n) for n in names]


@dataclass
class Accumulator:
    """Sums over all evaluated windows; turned into the report at the end."""

    horizons: int
    n_frames: int = 0  # predicted frames (transitions)
    sq_err: float = 0.0
    abs_err: float = 0.0
    base_sq_err: float = 0.0
    base_abs_err: float = 0.0
    vmin: float = math.inf
    vmax: float = -math.inf
    roll_sq: np.ndarray = None  # (H,) summed per-frame MSE with inferred actions
    rand_sq: np.ndarray = None  # (H,) with random actions
    roll_n: int = 0
    ids: list = field(default_factory=list)
    z_pre: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    groups: list = field(default_factory=list)

    def __post_init__(self):
        self.roll_sq = np.zeros(self.horizons)
        self.rand_sq = np.zeros(self.horizons)


@torch.no_grad()
def evaluate_windows(model: LatentActionModel, batches, seed: int = 0, keep_features: bool = True) -> Accumulator:
    """Run the model over `batches` of (x [B,T,C,H,W] float32, labels [B,T-1] or None, group ids [B]).

    Random actions for controllability come from a generator seeded with `seed`.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    acc = None
    for x, labels, groups in batches:
        b, t = x.shape[:2]
        if acc is None:
            acc = Accumulator(horizons=t - 1)
        target = x[:, 1:]
        indices, z_pre = model.encode_actions(x)  # (B, T-1, K), (B, T-1, K, D)
        pred = model.decode_with_actions(x, indices)
        acc.n_frames += b * (t - 1)
        acc.sq_err += float((pred - target).pow(2).mean(dim=(2, 3, 4)).sum())
        acc.abs_err += float((pred - target).abs().mean(dim=(2, 3, 4)).sum())
        acc.base_sq_err += float((x[:, :-1] - target).pow(2).mean(dim=(2, 3, 4)).sum())
        acc.base_abs_err += float((x[:, :-1] - target).abs().mean(dim=(2, 3, 4)).sum())
        acc.vmin, acc.vmax = min(acc.vmin, float(target.min())), max(acc.vmax, float(target.max()))

        h = acc.horizons
        random_idx = torch.randint(0, cfg.num_embeddings, indices[:, :h].shape, generator=gen).to(indices.device)
        rolled = model.rollout(x[:, :1], indices[:, :h], h)  # frames 1..h from frame 0
        rolled_rand = model.rollout(x[:, :1], random_idx, h)
        acc.roll_sq += (rolled - target[:, :h]).pow(2).mean(dim=(2, 3, 4)).sum(0).cpu().numpy()
        acc.rand_sq += (rolled_rand - target[:, :h]).pow(2).mean(dim=(2, 3, 4)).sum(0).cpu().numpy()
        acc.roll_n += b

        acc.ids.append(model.action_ids(indices).reshape(-1).cpu().numpy())
        if keep_features:
            acc.z_pre.append(z_pre.reshape(b * (t - 1), -1).cpu().numpy())
        if labels is not None:
            acc.labels.append(np.asarray(labels).reshape(-1))
            acc.groups.append(np.repeat(np.asarray(groups), t - 1))
    if acc is None:
        raise ValueError("no windows to evaluate")
    return acc


def summarize(acc: Accumulator, num_actions: int, seed: int = 0) -> dict:
    """The report: plain floats and lists, ready for JSON."""
    peak = acc.vmax - acc.vmin
    mse, mae = acc.sq_err / acc.n_frames, acc.abs_err / acc.n_frames
    base_mse, base_mae = acc.base_sq_err / acc.n_frames, acc.base_abs_err / acc.n_frames
    roll_mse = acc.roll_sq / acc.roll_n
    rand_mse = acc.rand_sq / acc.roll_n
    psnr = lambda m: M.psnr_from_mse(m, peak)  # noqa: E731
    ids = np.concatenate(acc.ids)
    usage = M.code_usage(ids, num_actions)
    report = {
        "windows": acc.roll_n,
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
            "action_usage": usage["usage"],
            "action_perplexity": usage["perplexity"],
            "distinct_actions": int((np.asarray(usage["histogram"]) > 0).sum()),
            "action_histogram": {int(i): int(c) for i, c in enumerate(usage["histogram"]) if c},
        },
    }
    report["delta_psnr"] = report["rollout"][0]["delta_psnr"]
    if acc.labels:
        report["ground_truth"] = label_scores(ids, np.concatenate(acc.z_pre) if acc.z_pre else None,
                                              np.concatenate(acc.labels), np.concatenate(acc.groups), seed)
    return report


def label_scores(ids: np.ndarray, z_pre: np.ndarray | None, labels: np.ndarray, groups: np.ndarray, seed: int = 0) -> dict:
    """NMI over all transitions; probes fitted on half of the files and scored on the other half."""
    scores = {"nmi": M.normalized_mutual_information(ids, labels), "num_true_actions": int(labels.max()) + 1}
    fit, held = M.split_by_group(groups, fit_fraction=0.5, seed=seed)
    if len(fit) == 0 or len(held) == 0:  # one file: split transitions instead
        fit, held = M.split_fit_eval(len(labels), fit_fraction=0.5, seed=seed)
    scores["probe_split"] = "by file" if len(np.unique(groups)) > 1 else "by transition (one file)"
    scores["code_map_accuracy"] = M.mapping_probe_accuracy(ids[fit], labels[fit], ids[held], labels[held])
    if z_pre is not None:
        scores["linear_probe_accuracy"] = M.linear_probe_accuracy(
            z_pre[fit], labels[fit], z_pre[held], labels[held], num_classes=scores["num_true_actions"], seed=seed
        )
    scores["chance_accuracy"] = M.majority_chance(labels[fit], labels[held])
    scores["confusion"] = M.confusion_matrix(ids, labels, int(ids.max()) + 1, scores["num_true_actions"]).tolist()
    return scores


def split_batches(sequence_length: int, manifest, split: str, batch_size: int, max_windows: int | None = None, device="cpu"):
    """(x, labels, groups) batches over the split's non-overlapping windows."""
    index = build_window_index(manifest, split, sequence_length)
    reader = WindowReader(manifest.data_dir, sequence_length, manifest.dataset_key, manifest.latent_shape)
    labels_by_file = {rel: true_actions(Path(manifest.data_dir) / rel) for rel in index.files}
    has_labels = all(v is not None for v in labels_by_file.values())
    n = len(index) if max_windows is None else min(len(index), max_windows)
    order = np.arange(len(index)) if max_windows is None else np.random.default_rng(0).permutation(len(index))[:n]
    try:
        for lo in range(0, n, batch_size):
            sel = order[lo : lo + batch_size]
            files = [index.files[i] for i in index.file_ids[sel]]
            starts = index.starts[sel]
            x = torch.from_numpy(reader.read_batch(files, starts)).to(device)
            labels = None
            if has_labels:
                # transition t-1 -> t of a window starting at s is timeline frame s + t
                labels = np.stack([labels_by_file[f][s + 1 : s + sequence_length] for f, s in zip(files, starts)])
            yield x, labels, index.file_ids[sel]
    finally:
        reader.close()


def evaluate_checkpoint(checkpoint, data_dir, manifest_path, split="test", batch_size=16, max_windows=None,
                        out_dir=None, device="cpu", seed=0, figures=True) -> dict:
    model, cfg = load_model(checkpoint, device)
    manifest = load_manifest(manifest_path, data_dir)
    T = cfg.data.sequence_length
    acc = evaluate_windows(model, split_batches(T, manifest, split, batch_size, max_windows, device), seed=seed)
    report = summarize(acc, cfg.model.num_actions, seed=seed)
    report.update({"checkpoint": str(checkpoint), "split": split, "sequence_length": T})
    names = action_names(Path(manifest.data_dir) / manifest.split_files(split)[0])
    if names and "ground_truth" in report:
        report["ground_truth"]["action_names"] = names
    out_dir = Path(out_dir) if out_dir else Path(checkpoint).parent / f"eval_{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures:
        report["figures"] = write_figures(model, manifest, split, T, report, out_dir, device)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(out_dir / "report.json")
    return report


def write_figures(model, manifest, split, T, report, out_dir: Path, device) -> list[str]:
    x, _, _ = next(split_batches(T, manifest, split, batch_size=4, device=device))
    with torch.no_grad():
        indices, _ = model.encode_actions(x)
        pred = model.decode_with_actions(x, indices)
    paths = [F.plot_predictions(out_dir / "predictions.png", x[:, 0].cpu().numpy(), pred[:, 0].cpu().numpy(),
                                x[:, 1].cpu().numpy(), title=f"{split}: frame 1 predicted from frame 0 + inferred action")]
    hist = report["codebook"]["action_histogram"]
    counts = np.zeros(max(hist) + 1 if hist else 1, dtype=np.int64)
    for i, c in hist.items():
        counts[int(i)] = c
    paths.append(F.plot_code_histogram(out_dir / "code_usage.png", counts, title=f"{split}: action-id usage"))
    gt = report.get("ground_truth")
    if gt:
        confusion = np.asarray(gt["confusion"])  # (ids, true actions)
        names = gt.get("action_names")
        true_labels = names[: confusion.shape[1]] if names and len(names) >= confusion.shape[1] else None
        paths.append(F.plot_confusion(out_dir / "confusion.png", confusion, true_labels=true_labels,
                                      title=f"{split}: action id x true action"))
    return [str(p) for p in paths]


def print_report(report: dict) -> None:
    nf, base = report["next_frame"], report["copy_last_baseline"]
    print(f"\nEvaluation of {report.get('checkpoint', 'model')} on split '{report.get('split', '?')}': "
          f"{report['windows']} windows, {report['transitions']} transitions")
    print(f"PSNR peak {report['psnr_peak']:.3f} ({report['psnr_peak_definition']})")
    print(f"{'':24}{'MSE':>10}{'MAE':>10}{'PSNR':>10}")
    print(f"{'model (next frame)':24}{nf['mse']:>10.5f}{nf['mae']:>10.5f}{nf['psnr']:>10.2f}")
    print(f"{'copy-last baseline':24}{base['mse']:>10.5f}{base['mae']:>10.5f}{base['psnr']:>10.2f}")
    print(f"\n{'horizon':>8}{'rollout MSE':>14}{'PSNR':>9}{'random-action PSNR':>20}{'delta PSNR':>12}")
    for r in report["rollout"]:
        print(f"{r['horizon']:>8}{r['mse']:>14.5f}{r['psnr']:>9.2f}{r['psnr_random_actions']:>20.2f}{r['delta_psnr']:>12.3f}")
    cb = report["codebook"]
    print(f"\nactions used: {cb['distinct_actions']} distinct, perplexity {cb['action_perplexity']:.2f}")
    gt = report.get("ground_truth")
    if gt:
        print(f"ground truth ({gt['num_true_actions']} true actions): NMI {gt['nmi']:.3f}, code-map probe {gt['code_map_accuracy']:.3f}, "
              f"linear probe {gt.get('linear_probe_accuracy', float('nan')):.3f}, chance {gt['chance_accuracy']:.3f} ({gt['probe_split']})")
    if report.get("report_path"):
        print(f"\nreport: {report['report_path']}")
    for p in report.get("figures", []):
        print(f"figure: {p}")
