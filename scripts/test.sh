#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Two pytest workers, each with its own local Ray: much of a Ray-bound test is waiting on
# processes starting, which the other worker's tests fill. More workers than that start more
# Ray clusters than a small machine holds. `-n 0` (or LAM_TEST_WORKERS=0) runs in one process.
exec python -m pytest -n "${LAM_TEST_WORKERS:-2}" --dist worksteal "$@"
