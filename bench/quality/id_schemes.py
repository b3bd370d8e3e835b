"""How much of what a continuous action carries do its ids keep? Ids of one checkpoint, several ways.

    python -m bench.quality.id_schemes RUN/checkpoint_epoch0004
    python -m bench.quality.id_schemes CKPT --out ids.json --seed 1

For a checkpoint of a continuous bottleneck (`quantizer: gaussian`) and its data's test split
(true actions needed), each row is a way to turn the pre-quantisation action vectors into ids,
scored by the code-map probe that `bench.quality` reports (ids -> majority action, cross-fitted
over 5 folds of the test files: every test transition scored once):
  - the model's own ids (the checkpoint's k-means centroids);
  - k-means with k = 9, 16, 32 fitted on training-split vectors;
  - with a shifted prediction, k-means (k = the model's ids) on the shift kernels the vectors
    pick, and on the kernels' expected (dy, dx);
and, as the reference no id scheme can beat by much, a linear probe on the vectors themselves.
Three more linear probes look further back, into the encoder, each fitted on the training
split's transitions (its true actions: a diagnostic, never part of training) and scored on the
whole test split, because the encoder's features have too many dimensions for a few test
files: on the vectors, on the action head's features (what the last layer projects down to
the vector) and on the stem's motion features (what the encoder sees of a transition). The
same rows for the untrained model of the run's seed are the floor. If the ids score well below
the linear probe on the vectors, discretisation loses the action; if the vectors score well
below the head's features, the projection to `codebook_dim` drops it; if the features are low
too, the encoder does not compute it.
Two MLP probes (one hidden layer, same fit and score) ask whether the action is there to be
computed at all: on the stem's motion features, and on the pixel moments of each transition's
change (`PixelMoments.features`, which have no weights: the same for any checkpoint). A high
MLP probe with a low linear one means the action is in what the encoder sees, but training has
not made it a direction of its features.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from lam.data.manifest import load_manifest
from lam.errors import UserError
from lam.eval.evaluate import split_batches
from lam.eval.metrics import cross_fit, folds_by_group
from lam.eval.probes import kmeans_ids, linear_probe_accuracy, linear_probe_predictions, mapping_probe_predictions
from lam.model import LatentActionModel
from lam.model.stems import PixelMoments
from lam.runtime.checkpoint import load_model

from bench.quality.yardstick import UNTRAINED_FIT_WINDOWS, untrained_model


@torch.no_grad()
def transitions(model: LatentActionModel, cfg, split: str, max_windows: int | None = None) -> dict:
    """Per scored transition of a split (`split_batches`' windows, each transition once): the
    model's action ids `[N]`, its pre-quantisation vectors `[N, K*D]`, the action head's features
    `[N, F]` (all its parts, concatenated), the stem's motion features `[N, E]`, the pixel
    moments of the change `[N, 3C + 4]`, true actions (None without them) and file ids."""
    manifest = load_manifest(cfg.data.manifest, cfg.data.data_dir)
    rows = {"ids": [], "z": [], "head": [], "motion": [], "pixel_moments": [], "labels": [], "files": []}
    pixel_moments = PixelMoments(cfg.model, project=False)  # its features have no weights
    for x, labels, file_ids, counted in split_batches(cfg.data.sequence_length, manifest, split, 16, max_windows=max_windows):
        n = x.shape[0] * (x.shape[1] - 1)
        flat = counted.reshape(-1).numpy()
        patches = model.in_adapter(x)
        motion = model.encoder.motion(patches, x)  # (B, T-1, E)
        head = torch.cat([f.float() for f in model.encoder.head.features(patches, motion)], dim=-1)  # (B, T-1, F)
        indices, z = model.encode_actions(x)
        rows["ids"].append(model.action_ids(indices).reshape(n).numpy()[flat])
        rows["z"].append(z.reshape(n, -1).numpy()[flat])
        rows["head"].append(head.reshape(n, -1).numpy()[flat])
        rows["motion"].append(motion.float().reshape(n, -1).numpy()[flat])
        rows["pixel_moments"].append(pixel_moments.features(x).reshape(n, -1).numpy()[flat])
        rows["files"].append(np.repeat(np.asarray(file_ids), x.shape[1] - 1)[flat])
        if labels is not None:
            rows["labels"].append(np.asarray(labels).reshape(n)[flat])
    return {name: np.concatenate(parts) if parts else None for name, parts in rows.items()}


@torch.no_grad()
def shift_kernels(model: LatentActionModel, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertical and horizontal shift distributions each vector picks `[N, 2 * H]`, and their means `[N, 2]`."""
    p = torch.stack(model.shift.shift_weights(torch.from_numpy(z)), dim=1)  # (N, 2, H)
    offsets = torch.arange(p.shape[-1], dtype=torch.float32) - p.shape[-1] // 2
    return p.flatten(1).numpy(), (p * offsets).sum(-1).numpy()


def mlp_probe_accuracy(features_fit: np.ndarray, labels_fit: np.ndarray, features_eval: np.ndarray,
                       labels_eval: np.ndarray, seed: int = 0) -> float:
    """Accuracy on the eval part of a one-hidden-layer MLP (128 units) fitted on standardised
    features: what a small nonlinear read-out can get from them, where a linear probe cannot."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mlp = make_pipeline(StandardScaler(), MLPClassifier((128,), max_iter=500, random_state=seed))
    with warnings.catch_warnings():  # a probe stopped at max_iter is still a probe; its score says how good
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        mlp.fit(features_fit, labels_fit)
    return float(np.mean(mlp.predict(features_eval) == labels_eval))


def scheme_scores(model: LatentActionModel, cfg, seed: int = 0) -> dict:
    train = transitions(model, cfg, "train", UNTRAINED_FIT_WINDOWS)  # what the k-means rows are fitted on
    test = transitions(model, cfg, "test")
    if test["labels"] is None:
        raise UserError(f"the test split of {cfg.data.data_dir} has no true actions to score ids against")
    y = test["labels"]
    folds = folds_by_group(test["files"], seed=seed)  # as `lam eval` scores its probes: every test transition once

    def probe(ids: np.ndarray) -> float:
        return float(np.mean(cross_fit(lambda fit, held: mapping_probe_predictions(ids[fit], y[fit], ids[held]), folds) == y))

    k = cfg.model.num_embeddings
    rows = {"model_ids": probe(test["ids"])}
    for clusters in sorted({k, 16, 32}):
        rows[f"kmeans_{clusters}"] = probe(kmeans_ids(train["z"], test["z"], clusters, seed))
    if model.shift is not None:
        kernels_fit, means_fit = shift_kernels(model, train["z"])
        kernels, means = shift_kernels(model, test["z"])
        rows[f"kmeans_{k}_shift_kernel"] = probe(kmeans_ids(kernels_fit, kernels, k, seed))
        rows[f"kmeans_{k}_shift_mean"] = probe(kmeans_ids(means_fit, means, k, seed))
    z = test["z"]
    rows["linear_probe_on_vectors"] = float(np.mean(cross_fit(lambda fit, held: linear_probe_predictions(z[fit], y[fit], z[held]), folds) == y))
    whole_train = transitions(model, cfg, "train")
    if whole_train["labels"] is None:
        raise UserError(f"the train split of {cfg.data.data_dir} has no true actions to fit the encoder's probes on")
    for name, key in (("vectors", "z"), ("head", "head"), ("motion", "motion")):
        rows[f"train_fit_linear_probe_on_{name}"] = linear_probe_accuracy(whole_train[key], whole_train["labels"], test[key], y)
    for name in ("motion", "pixel_moments"):
        rows[f"train_fit_mlp_probe_on_{name}"] = mlp_probe_accuracy(whole_train[name], whole_train["labels"], test[name], y, seed)
    return {name: float(v) for name, v in rows.items()}


def run(checkpoint: str, seed: int = 0) -> dict:
    model, cfg = load_model(checkpoint)
    if not model.quantizer.continuous:
        raise UserError(f"{checkpoint}: quantizer {cfg.model.quantizer!r} has no continuous vectors to cluster "
                        "(this compares id schemes of a continuous bottleneck, e.g. --quantizer gaussian)")
    floor = untrained_model(cfg)
    return {"checkpoint": str(checkpoint), "data_dir": cfg.data.data_dir, "seed": seed,
            "trained": scheme_scores(model, cfg, seed), "untrained": scheme_scores(floor, cfg, seed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.id_schemes", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint folder of `lam train` with a continuous bottleneck")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's file split and of k-means (default 0)")
    parser.add_argument("--out", default=None, help="also write the scores here as JSON")
    args = parser.parse_args(argv)
    try:
        report = run(args.checkpoint, args.seed)
    except (UserError, FileNotFoundError) as e:
        print(f"id_schemes: error: {e}", file=sys.stderr)
        return 2
    width = max(map(len, report["trained"]))
    print(f"{'ids from':<{width}} {'trained':>8} {'untrained':>10}")
    for name, value in report["trained"].items():
        print(f"{name:<{width}} {value:>8.3f} {report['untrained'][name]:>10.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
