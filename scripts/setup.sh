#!/usr/bin/env bash
# Set up .venv with the project and its test tools. Safe to re-run; fast when already set up.
#
# torch is installed first, pinned to a build that is quick to get (LAM_TORCH_SPEC, default
# torch==2.13.0; on machines that keep a CPU wheel of it on disk this takes seconds). The
# project itself only asks for a range, so a GPU user's own torch build is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing ${LAM_TORCH_SPEC:-torch==2.13.0}"
  python -m pip install -q "${LAM_TORCH_SPEC:-torch==2.13.0}" || python -m pip install -q "torch>=2.4,<3"
fi
echo "[setup] installing lam and its dependencies"
python -m pip install -q -e ".[test]" 2>&1 | grep -v -e "^WARNING: Location" -e "^$" || true
python -c "import lam, torch, ray, h5py, wandb" || { echo "[setup] install failed" >&2; exit 1; }
