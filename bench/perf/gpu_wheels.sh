#!/usr/bin/env bash
# Prepare a folder of wheels for running the GPU check on an offline GPU machine.
#
# The GPU machine (x86-64, Linux, CPython 3.12 at /opt/torch/.venv/bin/python3) has
# no network. Its image already holds torch (2.11.0+cu130), numpy, pandas, pyarrow,
# h5py, scikit-learn, matplotlib and most of the rest (PREINSTALLED below) but not
# Ray. This script resolves ray[EXTRAS]==RAY_VERSION for cp312/manylinux, leaves out
# what the image already has and what is never imported (NOT_NEEDED below),
# downloads the rest as wheels, and repacks the Ray wheel without
# ray/jars/ray_dist.jar (Java workers only, 32 MB) and the dashboard's JavaScript
# source maps, so that the folder plus the repository stay under the 64 MiB that
# can be carried to that machine.
#
#   usage: bench/perf/gpu_wheels.sh [DEST]        # DEST defaults to .whl/ at the repo root
#   env:   PYTHON (default python3), RAY_VERSION (2.60.0),
#          EXTRAS (default,train,tune,data; drop "default" to leave out the dashboard)
#
# On the GPU machine, from the repository root, either
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
# or, in a venv that sees the image's packages,
#   python3 -m venv --system-site-packages /tmp/venv
#   /tmp/venv/bin/pip install --no-index --no-deps .whl/*.whl
#   /tmp/venv/bin/pip install --no-index --no-deps --no-build-isolation -e .
# (--no-deps for the project itself: wandb is not bundled. It is imported only when
# a run's wandb_mode is not "disabled", so run the check with --wandb_mode disabled.)
#
# Versions to watch on the GPU machine (mostly unknown there; not bundled because
# the image has these packages): ray needs protobuf>=3.20.3, msgpack>=1,<2,
# packaging>=24.2, click>=7, pandas>=2.2.3 and pyarrow>=17 (train, tune, data), and
# for the dashboard aiohttp>=3.14.4, grpcio>=1.42 and prometheus-client; the bundled
# opentelemetry-proto wants protobuf>=5,<8. typing_extensions is bundled although
# the image has it: the bundled pydantic needs typing_extensions>=4.16, and a newer
# one than the image's is harmless.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
DEST=${1:-$REPO/.whl}
PY=${PYTHON:-python3}
RAY_VERSION=${RAY_VERSION:-2.60.0}
EXTRAS=${EXTRAS:-default,train,tune,data}
LIMIT_MIB=60

# Wheels that run on the GPU machine: CPython 3.12, glibc-based x86-64 Linux.
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# Packages installed on the GPU machine's image (pip names).
PREINSTALLED="
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama
contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x
cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader
lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests
rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash
yarl zipp"
# Bundled even though the image has them (see the header).
ALWAYS="typing-extensions"
# In ray's closure but never imported when training with the dashboard on, left out
# to save 14 MiB: virtualenv and its deps (runtime_env pip/uv only), py-spy (a binary
# the dashboard runs for stack dumps on demand), and opencensus' declared deps
# google-api-core/google-auth/cryptography (ray uses only opencensus.stats;
# cryptography otherwise serves TLS and cluster launchers only).
NOT_NEEDED="
virtualenv distlib python-discovery platformdirs py-spy
google-api-core google-auth proto-plus cryptography cffi pycparser pyasn1 pyasn1-modules"

mkdir -p "$DEST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== resolving ray[$EXTRAS]==$RAY_VERSION for cp312 manylinux x86-64"
"$PY" -m pip install --quiet --dry-run --ignore-installed "${TARGET[@]}" \
    --target "$WORK/none" --report "$WORK/report.json" "ray[$EXTRAS]==$RAY_VERSION"

# name==version for every package in the closure that the GPU machine lacks and DEST
# does not hold yet, and that is needed (ray itself comes last: it is repacked below).
"$PY" - "$WORK/report.json" "$DEST" "$PREINSTALLED $NOT_NEEDED" "$ALWAYS" > "$WORK/needed.txt" <<'EOF'
import json, os, re, sys
report, dest, skip, always = sys.argv[1:]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
have = {norm(n) for n in skip.split()} - {norm(n) for n in always.split()}
present = set()
for f in os.listdir(dest):
    if f.endswith(".whl"):
        name, version = f.split("-")[:2]
        present.add((norm(name), version))
specs = []
for item in json.load(open(report))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if norm(name) in have or (norm(name), version) in present:
        continue
    specs.append((norm(name) == "ray", f"{name}=={version}"))
for _, spec in sorted(specs):
    print(spec)
EOF

while read -r spec; do
    echo "-- $spec"
    if [[ $spec == ray==* ]]; then
        "$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$WORK/ray" "$spec"
    else
        "$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$DEST" "$spec"
    fi
done < "$WORK/needed.txt"

# Repack the Ray wheel without the Java jar and the source maps, dropping their
# RECORD lines; same file name, so pip installs it as the original.
for whl in "$WORK"/ray/ray-*.whl; do
    [[ -e $whl ]] || continue
    echo "== repacking $(basename "$whl") without ray/jars/ray_dist.jar and dashboard *.map"
    "$PY" - "$whl" "$DEST/$(basename "$whl")" <<'EOF'
import os, sys, zipfile
src, dst = sys.argv[1:]

def dropped(path):
    return path == "ray/jars/ray_dist.jar" or (
        path.startswith("ray/dashboard/client/build/") and path.endswith(".map"))

removed = 0
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst + ".part", "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        if dropped(info.filename):
            removed += 1
            continue
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD") and info.filename.count("/") == 1:
            lines = data.decode().splitlines(keepends=True)
            data = "".join(l for l in lines if not dropped(l.split(",", 1)[0])).encode()
        info.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(info, data)
os.replace(dst + ".part", dst)
print(f"   removed {removed} files")
EOF
done

echo "== $DEST"
for whl in "$DEST"/*.whl; do
    printf '%8.2f MiB  %s\n' "$(awk -v b="$(wc -c < "$whl")" 'BEGIN { print b / 1048576 }')" "$(basename "$whl")"
done
total=$(cat "$DEST"/*.whl | wc -c)
total_mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "total: $total_mib MiB in $(ls "$DEST"/*.whl | wc -l) wheels"
if (( total > LIMIT_MIB * 1048576 )); then
    echo "error: $total_mib MiB is over the $LIMIT_MIB MiB allowed (the repository and the wheels must stay under 64 MiB together)" >&2
    exit 1
fi
