#!/usr/bin/env bash
# Set up (if needed) and run the embedded default: synthetic data, local Ray, 2-worker training,
# evaluation, wandb offline unless an API key is configured. Extra arguments go to `lam demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec lam demo "$@"
