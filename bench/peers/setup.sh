#!/usr/bin/env bash
# Benchmark peers, each in its own virtual environment (never project dependencies):
#   MLServer 1.7.1 (its default mode needs uvloop 0.21.0) and Triton via PyTriton 0.7.0
#   (numpy < 2); FastAPI in the project's venv for the ASGI comparison. Also h2load
#   (Debian's nghttp2-client) when running as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
mkdir -p bench/.venvs
if [ ! -x bench/.venvs/mlserver/bin/mlserver ]; then
    "$PYTHON" -m venv bench/.venvs/mlserver
    bench/.venvs/mlserver/bin/pip install --quiet mlserver==1.7.1 uvloop==0.21.0 onnxruntime==1.31.1
fi
if [ ! -x bench/.venvs/pytriton/bin/python ] || ! bench/.venvs/pytriton/bin/python -c "import pytriton" 2>/dev/null; then
    "$PYTHON" -m venv bench/.venvs/pytriton
    bench/.venvs/pytriton/bin/pip install --quiet nvidia-pytriton==0.7.0 "numpy<2" onnxruntime==1.31.1
fi
# FastAPI beside Starlette for bench/rest_bench.py's comparison of ASGI stacks (bench only).
.venv/bin/python -c "import fastapi" 2>/dev/null || .venv/bin/pip install --quiet -c constraints.txt fastapi==0.165.0
if ! command -v h2load >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q nghttp2-client
fi
