#!/usr/bin/env bash
# Create .venv and install modality-lens (editable, with the dev extra) into it. The dev extra
# includes ray (the tests of `run --engine ray` run in CI); a plain install leaves it out.
#
# torch comes first and is chosen by machine: with a working NVIDIA GPU, the normal PyPI
# build (CUDA); without one, a CPU build: torch==2.13.0 where a local CPU wheel of it is on
# pip's find-links (as on our development and CI machines), else the CPU wheel index of
# pytorch.org. An already installed torch is kept. Safe to run again: it only adds what is
# missing. Each step says what it does before it starts (the first install takes minutes).
# numpy is installed together with torch: torch imported without numpy warns "Failed to
# initialize NumPy".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "setup: $*" >&2; }
[ -x .venv/bin/python ] || { say "creating .venv with $PY"; "$PY" -m venv .venv; }
VPY=.venv/bin/python
pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }

if ! "$VPY" -W ignore -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    say "installing torch (CUDA build, a few minutes)"
    pip_q torch numpy
  elif ls ${PIP_FIND_LINKS:-/nonexistent}/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    say "installing torch 2.13.0 (CPU build from $PIP_FIND_LINKS, a minute or two)"
    pip_q "torch==2.13.0" numpy
  else
    say "installing torch (CPU build from download.pytorch.org, a few minutes)"
    pip_q torch numpy --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
  "$VPY" -W ignore -c "import torch" || { say "torch failed to install" ; exit 1; }
fi
# Skip the (slow) resolver when the project is already installed and nothing changed.
stamp=.venv/.modality-lens-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing modality-lens and its dependencies (transformers, nnsight, ...; a few minutes the first time)"
  pip_q -e ".[dev]"
  "$VPY" -c "import hooks, interp, nnsight, transformers, ray" || { say "install failed"; exit 1; }
  touch "$stamp"
  say "done"
fi
