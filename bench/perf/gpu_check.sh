#!/usr/bin/env bash
# The GPU check: run this first whenever a GPU is available. It sets up what it needs from
# a clean tree, then runs `python -m bench.perf.gpu_check` (what it measures: bench/perf/gpu_check.py
# and bench/README.md), writing $LAM_BENCH_HOME/results-gpu.json and printing a table.
#
#   bash bench/perf/gpu_check.sh                 # on a GPU machine
#   bash bench/perf/gpu_check.sh --cpu-dry-run   # anywhere: the same sections on CPU with the tiny recipe
#
# Which Python and torch, in this order:
#   1. .venv (made by scripts/setup.sh) when its torch sees a CUDA device (always, for --cpu-dry-run;
#      created with `scripts/setup.sh run`, the project alone, if missing);
#   2. else the machine's own python3 (LAM_PYTHON) when its torch sees a CUDA device: its CUDA build
#      is kept, and what the project needs beyond it goes to .gpu-site/ (on PYTHONPATH): from the
#      wheels in .whl/ when that folder exists (an offline machine; bench/perf/gpu_wheels.sh prepares
#      it where pip works), else from the package index;
#   3. else, when nvidia-smi finds a GPU: a new .venv-gpu with torch from PyTorch's CUDA wheel
#      index (LAM_TORCH_INDEX, default https://download.pytorch.org/whl/cu128) and the project.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
DRY_RUN=0
for arg in "$@"; do [ "$arg" = "--cpu-dry-run" ] && DRY_RUN=1; done

sees_gpu() { "$1" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }
has_deps() { "$1" -c "import ray.train, ray.data, ray.tune, h5py, sklearn, pyarrow, pandas, yaml, tqdm" 2>/dev/null; }

if [ "$DRY_RUN" = 1 ]; then
  if ! { [ -x .venv/bin/python ] && has_deps .venv/bin/python; }; then bash scripts/setup.sh run; fi
  PY=.venv/bin/python
  echo "[gpu-check] dry run on CPU with $($PY -c 'import torch; print("torch", torch.__version__)')"
elif [ -x .venv/bin/python ] && sees_gpu .venv/bin/python && has_deps .venv/bin/python; then
  PY=.venv/bin/python
  echo "[gpu-check] using .venv: its torch sees the GPU"
elif sees_gpu "${LAM_PYTHON:-python3}"; then
  PY=$(command -v "${LAM_PYTHON:-python3}")
  echo "[gpu-check] using $PY: $($PY -c 'import torch; print("torch", torch.__version__)') sees the GPU; keeping it"
  export PYTHONPATH="$REPO/.gpu-site${PYTHONPATH:+:$PYTHONPATH}"
  if ! has_deps "$PY"; then
    if [ -d .whl ]; then
      echo "[gpu-check] installing the wheels in .whl/ into .gpu-site/"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target .gpu-site .whl/*.whl
    else
      echo "[gpu-check] installing Ray and the project's other needs into .gpu-site/"
      "$PY" -m pip install -q --target .gpu-site "ray[default,train,tune,data]>=2.50" h5py scikit-learn pyarrow pandas pyyaml tqdm
    fi
    has_deps "$PY" || { echo "[gpu-check] $PY still cannot import Ray Train, h5py or scikit-learn" >&2; exit 1; }
  fi
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[gpu-check] no Python with a CUDA torch here: making .venv-gpu with torch from ${LAM_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
  [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu
  sees_gpu .venv-gpu/bin/python || .venv-gpu/bin/python -m pip install -q torch --index-url "${LAM_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
  .venv-gpu/bin/python -m pip install -q -e .
  PY=.venv-gpu/bin/python
else
  echo "[gpu-check] no GPU found (no torch that sees a CUDA device, no nvidia-smi); to check the script itself: bash bench/perf/gpu_check.sh --cpu-dry-run" >&2
  exit 2
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m bench.perf.gpu_check "$@"
