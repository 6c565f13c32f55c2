#!/usr/bin/env bash
# Installs threedsr_ns and everything it needs into ./.venv (Python 3.10+). Idempotent.
# torch is pinned to the build this project is tested with; on a CUDA machine pip's torch wheel is a
# CUDA build, and gsplat compiles its kernels on first use (or install a prebuilt gsplat wheel first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -c "import threedsr_ns, nerfstudio, gsplat, diffusers; print('threedsr_ns installed in .venv')"
