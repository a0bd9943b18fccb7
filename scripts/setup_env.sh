#!/usr/bin/env bash
# Create .venv (Python 3.11) if needed and install the project with its dev and peers extras
# (peers: novosparc, tangram-sc, the packages of the peer methods the pipeline runs).
# Re-installs only when pyproject.toml changed since the last install. Source it or run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.alphastomics-install-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing alphastomics and its dependencies into .venv (torch pinned to 2.13.0)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first and pinned: an unpinned resolution would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  # the torch pin as a constraint too: no extra may move it
  echo "torch==2.13.0" > .venv/torch-constraint.txt
  .venv/bin/python -m pip install --quiet -c .venv/torch-constraint.txt -e ".[dev,peers]"
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
