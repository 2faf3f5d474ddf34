#!/usr/bin/env bash
# GPU check for the first machine with an NVIDIA GPU (CUDA 13 driver,
# Python 3.12, no internet). Before: `make gpu-wheels` on a machine with
# internet fills .whl/ (cp312 manylinux wheels of onnxruntime-gpu and the
# serving deps); copy the checkout with .whl/ over. Then, one command:
#   scripts/gpu_check.sh            (prints a JSON record on its last line)
# It installs only from .whl/ into .gpu-venv/, starts dlserve with
# --device cuda and --device cpu on the committed models plus the wide MLP,
# asserts dlserve_model_ready{provider="CUDAExecutionProvider"} for each,
# compares outputs with CPU (1e-4) and benches the wide MLP at batch 1 and 64.
# NOT YET RUN ON A GPU (see deploy/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.12}"
VENV=.gpu-venv
[ -d .whl ] || { echo "gpu_check: .whl/ is missing: run 'make gpu-wheels' first" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-index --find-links .whl \
    -r requirements/serve-gpu.txt 'onnxruntime-gpu[cuda,cudnn]==1.31.1' onnx
# The CUDA runtime, cuBLAS, cuFFT, cuRAND and cuDNN come as nvidia-* wheels.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
NVLIBS="$(find "$SITE/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | paste -sd: -)"
export LD_LIBRARY_PATH="$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The project itself runs from the checkout (no build backend needed offline).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$VENV/bin/python" scripts/gpu_check.py "$@"
