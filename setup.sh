#!/usr/bin/env bash
# Sets up a fresh Debian machine for hpo: system packages (real Fashion-MNIST, Chromium for PNG
# export and the dashboard test, Slurm and munge for the cluster test), then a virtual environment
# with hpo and its test tools.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] \
   || [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ] || [ ! -x /usr/sbin/munged ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium chromium-driver \
    slurm-wlm munge >/dev/null
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# This machine's local package mirror warns about every folder it lacks: keep real messages only.
quiet() { "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }
quiet .venv/bin/pip install -q -e '.[dev]'
echo "hpo is set up: .venv/bin/python -m hpo.run --study lenet_lr --trials 50" >&2
