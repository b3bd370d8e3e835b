"""Ray job entrypoint for `lam tune`: an ASHA hyperparameter sweep on the cluster the job was submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env ray_jobs/runtime_env.yaml \
        -- python ray_jobs/tune.py --config run.yaml --data_dir /data/latents --storage_path s3://bucket/lam-runs

Arguments are exactly `lam tune`'s (`lam tune --help`). Inside a Ray job RAY_ADDRESS
names the cluster, so every trial's TorchTrainer runs on it; the autoscaler adds GPU
workers while trials wait. Runs go to --storage_path, by default the cluster's
LAM_STORAGE_PATH when its nodes set one (see _common.py).
Exit codes: 0 done, 1 the sweep failed, 2 bad arguments or data (one line on stderr).
"""

from _common import run  # this folder is on sys.path when Python runs a script in it

if __name__ == "__main__":
    run("tune")
