"""`lam eval` and `lam export-actions`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lam.commands.flags import add_flag

RAW = argparse.RawDescriptionHelpFormatter


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: prediction error, controllability, codebook use, action recovery",
        formatter_class=RAW,
        description="Evaluate a checkpoint on every transition of a split: next-frame MSE/MAE/PSNR vs a copy-last-frame\n"
        "baseline, rollout error per horizon, controllability (delta-t PSNR: inferred vs random actions) and\n"
        "codebook usage. When the files carry ground-truth actions: NMI, probe accuracies vs chance and vs\n"
        "probes on frame t-1 or frame t alone (the margin is what the actions add), k-means ids of the\n"
        "pre-quantisation vectors, and the bootstrap std of every score; per group of files too.\n"
        "Collapse (one or two ids used, actions ignored by the decoder) is printed as a warning.\n"
        "Writes report.json and PNG figures (default: CHECKPOINT/../eval_SPLIT/).",
        epilog="examples:\n  lam eval --checkpoint runs/my-run/checkpoint_epoch0010 --data_dir D --manifest_path D/manifest.json --split test\n"
        "  lam eval --checkpoint CKPT --data_dir D --split val --max_windows 256 --wandb_run my-run\n"
        "  lam eval --checkpoint CKPT --data_dir D --group_by '^([^/]+)/'   # one group per top-level folder",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder written by lam train (checkpoint_epoch*)")
    add_flag(p, "data_dir", required=True, help="folder of the H5 latent files")
    add_flag(p, "manifest_path", default=None, help="split manifest (default: DATA_DIR/manifest.json)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate (default: test)")
    add_flag(p, "batch_size", type=int, default=16, help="windows per forward pass (default: 16)")
    add_flag(p, "max_windows", type=int, default=None, help="evaluate a random subset of this many windows (default: all)")
    add_flag(p, "group_by", default=None, metavar="REGEX",
             help="group files by this regular expression on their paths (the first capture group, or the whole match, "
                  "names the group; files that do not match: 'other') and score each group (default: the manifest's "
                  "per-file 'group' when present, else no groups)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of files for the std of each score (0: none; default: 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe split, k-means, the bootstrap and the random actions (default: 0)")
    p.add_argument("--out", default=None, help="output folder for report.json and figures (default: CHECKPOINT/../eval_SPLIT)")
    p.add_argument("--no_figures", "--no-figures", action="store_true", help="write report.json only")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    add_flag(p, "wandb_run", default=None, help="add the report's numbers to this training run's wandb run")
    add_flag(p, "wandb_project", default="vvae-lam", help="wandb project of that run (default: vvae-lam)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser(
        "export-actions",
        help="write one latent action per transition of every file to Parquet",
        formatter_class=RAW,
        description="Label every transition z[t-1] -> z[t] (t >= 1) of every selected file with its latent action.\n"
        "Columns: file, t, codes, action_id. Runs as Ray Data batch inference over an actor pool\n"
        "(the local Ray, or the cluster in RAY_ADDRESS).",
        epilog="examples:\n  lam export-actions --checkpoint CKPT --data_dir D --out actions.parquet\n"
        "  lam export-actions --checkpoint CKPT --data_dir D --manifest_path D/manifest.json --split test --out test_actions.parquet\n"
        "  lam export-actions --checkpoint CKPT --data_dir s3data --out a.parquet --num_actors 8 --use_gpu",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder written by lam train (checkpoint_epoch*)")
    add_flag(p, "data_dir", required=True, help="folder of the H5 latent files")
    add_flag(p, "manifest_path", default=None, help="split manifest (default: DATA_DIR/manifest.json)")
    p.add_argument("--split", default=None, choices=["train", "val", "test"], help="only this split (default: every file in the manifest)")
    p.add_argument("--out", required=True, help="Parquet file to write")
    add_flag(p, "batch_size", type=int, default=16, help="windows per forward pass (default: 16)")
    add_flag(p, "num_actors", type=int, default=1, help="inference actors, each holding the model once (default: 1)")
    add_flag(p, "use_gpu", action="store_true", help="one GPU per actor")
    p.set_defaults(func=run_export)


def run_eval(args) -> int:
    from lam.eval.evaluate import evaluate_checkpoint, print_report
    from lam.runtime.checkpoint import check_checkpoint

    check_checkpoint(args.checkpoint)
    report = evaluate_checkpoint(
        args.checkpoint, args.data_dir, args.manifest_path or str(Path(args.data_dir) / "manifest.json"), split=args.split,
        batch_size=args.batch_size, max_windows=args.max_windows, out_dir=args.out, device=args.device, figures=not args.no_figures,
        group_by=args.group_by, bootstrap=args.bootstrap, seed=args.seed,
    )
    print_report(report)
    if args.wandb_run:
        log_to_wandb(report, args.wandb_run, args.wandb_project)
    return 0


def log_to_wandb(report: dict, run_name: str, project: str) -> None:
    import wandb

    from lam.runtime.run_log import resolve_wandb_mode, wandb_run_id

    split = report["split"]
    flat = {f"eval_{split}/next_frame_{k}": v for k, v in report["next_frame"].items()}
    flat |= {f"eval_{split}/baseline_{k}": v for k, v in report["copy_last_baseline"].items()}
    flat |= {f"eval_{split}/delta_psnr_h{r['horizon']}": r["delta_psnr"] for r in report["rollout"]}
    gt = report.get("ground_truth") or {}
    flat |= {f"eval_{split}/{k}": v for k, v in gt.items() if isinstance(v, float)}
    flat |= {f"eval_{split}/kmeans_{k}": v for k, v in (gt.get("kmeans") or {}).items() if isinstance(v, (int, float))}
    flat[f"eval_{split}/action_ids_used"] = report["action_ids_used"]
    run = wandb.init(project=project, id=wandb_run_id(run_name), resume="allow", mode=resolve_wandb_mode("auto"))
    run.summary.update(flat)
    run.finish()


def run_export(args) -> int:
    from lam.eval.export import export_actions
    from lam.runtime.checkpoint import check_checkpoint

    check_checkpoint(args.checkpoint)
    result = export_actions(args.checkpoint, args.data_dir, args.out, args.manifest_path, args.split,
                            batch_size=args.batch_size, num_actors=args.num_actors, use_gpu=args.use_gpu)
    print(json.dumps(result))
    return 0
