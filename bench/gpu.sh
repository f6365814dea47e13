#!/usr/bin/env bash
# On a CUDA machine, in under 8 minutes: the tests that need CUDA (pytest -m cuda), LeNet-5 and
# ResNet-18 epoch times on CIFAR-10-shaped data with AMP and channels_last on and off, and
# --workers auto with two trials on one GPU (bench/gpu.py). Without CUDA: one line, exit 0.
#   bench/gpu.sh            (from the repository root; PYTHON=... picks the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
cuda=$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null)
if [ "$cuda" != "True" ]; then
    if [ -z "$cuda" ]; then why="$PYTHON cannot import torch (PYTHON=... names another)"; else why="torch sees no CUDA device"; fi
    echo "gpu.sh: no CUDA here ($why): nothing to run"
    exit 0
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
echo "== pytest -m cuda"
timeout 180 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests || status=$?
echo "== bench/gpu.py"
timeout 280 "$PYTHON" bench/gpu.py || status=$?
exit $status
