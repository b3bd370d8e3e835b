#!/usr/bin/env bash
# Set up .venv. Safe to re-run; fast when already set up.
#
#   bash scripts/setup.sh        the project, its test tools and the benchmark environments (scripts/test.sh)
#   bash scripts/setup.sh run    the project alone: what `lam` needs (scripts/demo.sh)
#
# torch is installed first, pinned to a build that is quick to get (LAM_TORCH_SPEC, default
# torch==2.13.0; on machines that keep a CPU wheel of it on disk this takes seconds). The
# project itself only asks for a range, so a GPU user's own torch build is kept.
#
# Packages are installed with uv (itself pip-installed into .venv) from the sources pip is
# configured with (scripts/uv_args.py), falling back to pip; LAM_SETUP_PIP=1 uses pip only.
#
# Without `run`, the `bench` extra (the environments of bench.quality.realplay) comes too; where this runs
# as root with apt-get and a program of its GUI environments is missing, so do their Debian
# packages: chromium + chromium-driver (miniwob), Xvfb, Openbox and the desktop applications
# (desktop) (LAM_SETUP_NO_APT=1 skips that). Without them bench.quality.realplay's tests are skipped,
# saying what to install (under CI, where they must run, they fail).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-test}
case "$MODE" in
  run|test) ;;
  *) echo "usage: bash scripts/setup.sh [run|test]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
# The installer: uv where it can be had (the same versions from the same sources as pip, in
# seconds instead of minutes), pip otherwise or with LAM_SETUP_PIP=1.
UV=""
UV_ARGS=()
if [ -z "${LAM_SETUP_PIP:-}" ] && { [ -x .venv/bin/uv ] || python -m pip install -q uv >/dev/null 2>&1; } && [ -x .venv/bin/uv ]; then
  UV=.venv/bin/uv
  mapfile -t UV_ARGS < <(python scripts/uv_args.py)  # pip's indexes, wheel folders and constraints
fi
# pip install "$@" (without pip's notes about the local wheel folders it was pointed at)
pip_install() {
  if [ -n "$UV" ]; then
    # --compile-bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is set nothing writes .pyc
    # files later, and every Ray worker would compile torch and Ray from source at its start.
    "$UV" pip install -q --compile-bytecode --python .venv/bin/python --index-strategy unsafe-best-match "${UV_ARGS[@]}" "$@" && return 0
    echo "[setup] uv could not install $*; trying pip" >&2
  fi
  local log status=0
  log=$(python -m pip install -q "$@" 2>&1) || status=$?
  printf '%s\n' "$log" | grep -v -e "^WARNING: Location" -e "^$" >&2 || true
  return "$status"
}
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing ${LAM_TORCH_SPEC:-torch==2.13.0}"
  pip_install "${LAM_TORCH_SPEC:-torch==2.13.0}" || pip_install "torch>=2.4,<3"
fi
if [ "$MODE" = run ]; then
  echo "[setup] installing lam and its dependencies"
  pip_install -e . || true  # checked below
else
  echo "[setup] installing lam, its dependencies, test tools and benchmark environments"
  pip_install -e ".[test,bench]" || true  # checked below
  if ! python -c "import lam, minigrid, crafter, vizdoom, miniwob, selenium, Xlib" 2>/dev/null; then
    echo "[setup] warning: the bench extra did not install; bench.quality.realplay's tests will be skipped (under CI: fail)" >&2
    pip_install -e ".[test]" || true
  fi
fi
python -c "import lam, torch, ray, h5py, wandb" || { echo "[setup] install failed" >&2; exit 1; }
[ "$MODE" = run ] && exit 0
# the programs the GUI environments run (miniwob: chromedriver beside chromium; desktop: the rest), and their packages
GUI_PROGRAMS="chromedriver Xvfb openbox mousepad pcmanfm gnumeric xterm"
GUI_PACKAGES="chromium chromium-driver xvfb openbox mousepad pcmanfm gnumeric xterm fonts-dejavu-core"
missing=""
for program in $GUI_PROGRAMS; do
  command -v "$program" >/dev/null 2>&1 || missing="$missing $program"
done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ -z "${LAM_SETUP_NO_APT:-}" ]; then
  echo "[setup] installing $GUI_PACKAGES (apt) for bench.quality.realplay's GUI environments (missing:$missing)"
  # shellcheck disable=SC2086  # one word per package
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $GUI_PACKAGES; } >/dev/null \
    || echo "[setup] warning: the GUI environments' packages did not install; the miniwob and desktop tests will be skipped (under CI: fail)" >&2
fi
