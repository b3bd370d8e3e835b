"""Ray job entrypoint for `lam train`: train on the cluster the job was submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env ray_jobs/runtime_env.yaml \
        -- python ray_jobs/train.py --config run.yaml --data_dir /data/latents --storage_path s3://bucket/lam-runs

Arguments are exactly `lam train`'s (`lam train --help`). Inside a Ray job RAY_ADDRESS
names the cluster, so training joins it instead of starting a local Ray. The data
directory must be readable from every node (shared filesystem or a copy on each node);
checkpoints and metrics go to --storage_path (a shared path or an s3:// / gs:// URI),
by default the cluster's LAM_STORAGE_PATH when its nodes set one (see _common.py).
Exit codes: 0 done, 1 training failed, 2 bad arguments or data (one line on stderr).
"""

from _common import run  # this folder is on sys.path when Python runs a script in it

if __name__ == "__main__":
    run("train")
