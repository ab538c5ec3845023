#!/usr/bin/env bash
# Create .venv and install modality-lens (editable, with the dev extra) into it.
#
# torch comes first and is chosen by machine: with a working NVIDIA GPU, the normal PyPI
# build (CUDA); without one, a CPU build: torch==2.13.0 where a local CPU wheel of it is on
# pip's find-links (as on our development and CI machines), else the CPU wheel index of
# pytorch.org. An already installed torch is kept. Safe to run again: it only adds what is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }

if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip_q torch
  elif ls ${PIP_FIND_LINKS:-/nonexistent}/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    pip_q "torch==2.13.0"
  else
    pip_q torch --index-url https://download.pytorch.org/whl/cpu
  fi
  "$VPY" -c "import torch" || { echo "setup: torch failed to install" >&2; exit 1; }
fi
# Skip the (slow) resolver when the project is already installed and nothing changed.
stamp=.venv/.modality-lens-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip_q -e ".[dev]"
  "$VPY" -c "import hooks, interp, nnsight, transformers" || { echo "setup: install failed" >&2; exit 1; }
  touch "$stamp"
fi
