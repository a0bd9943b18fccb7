#!/usr/bin/env bash
# Install what is needed, then run the test suite (extra arguments go to pytest).
# Two pytest-xdist workers (PYTEST_WORKERS): the end-to-end tests wait on Snakemake and SLURM much
# of the time, and the other worker uses that time; each test module stays on one worker
# (tests/conftest.py), so module fixtures run once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder "$@"
