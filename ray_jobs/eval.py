"""Ray job entrypoint for `lam eval`: evaluate a checkpoint on a split, on the cluster's head node.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env ray_jobs/runtime_env.yaml \
        -- python ray_jobs/eval.py --checkpoint /shared/lam-runs/RUN/checkpoint_epoch0099 \
           --data_dir /data/latents --split test

Arguments are exactly `lam eval`'s (`lam eval --help`). The job's driver runs it, so the
checkpoint and data must be on a filesystem that node can read (`lam eval` reads local
paths; copy a checkpoint down from s3:// / gs:// first). Add `--entrypoint-num-gpus 1`
to `ray job submit` to run it on a GPU node, with `--device cuda`.
Exit codes: 0 done, 2 bad arguments or data (one line on stderr).
"""

from _common import run  # this folder is on sys.path when Python runs a script in it

if __name__ == "__main__":
    run("eval")
