#!/usr/bin/env bash
# Set up (if needed) and run the embedded default: synthetic data, local Ray, 2-worker training,
# evaluation, wandb offline unless an API key is configured. Extra arguments go to `lam demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh run  # the project alone: the demo needs no test tools or benchmark environments
. .venv/bin/activate
exec lam demo "$@"
