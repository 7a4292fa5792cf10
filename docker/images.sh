#!/usr/bin/env bash
# `make images`: builds every image docker-compose.yml uses, tagged as the compose file
# names them, so `docker compose up` needs no registry afterwards.
#
#   OFFLINE=auto (default)  use the official base images when Docker Hub answers, else
#                           stand-ins built from Debian packages (docker/base/build-offline.sh)
#   OFFLINE=1 / OFFLINE=0   force either path
#   GPU=1                   also build the GPU server (needs the NVIDIA CUDA base image)
#   MNIST_SERVING_TORCH_WHEELS  a directory holding torch-2.13.0+cpu-*.whl for the trainer;
#                           default: pip's own find-links directory when it holds that wheel
#   MNIST_SERVING_CA_BUNDLE the CA bundle pip trusts inside builds (default: the system's)
# Base images can also be named one by one: MNIST_SERVING_{PYTHON,LB,PROMETHEUS,CUDA}_BASE.
set -euo pipefail
cd "$(dirname "$0")/.."

offline="${OFFLINE:-auto}"
python_base="${MNIST_SERVING_PYTHON_BASE:-python:3.11.11-slim-bookworm}"
if [ "$offline" = auto ]; then
    if timeout 60 docker pull -q "$python_base" >/dev/null 2>&1; then offline=0; else offline=1; fi
    echo "images: Docker Hub $([ "$offline" = 1 ] && echo unreachable: offline path || echo reachable)"
fi
if [ "$offline" = 1 ]; then
    docker/base/build-offline.sh
    export MNIST_SERVING_PYTHON_BASE="${MNIST_SERVING_PYTHON_BASE:-mnist-serving-base/python:3.11-bookworm}"
    export MNIST_SERVING_LB_BASE="${MNIST_SERVING_LB_BASE:-mnist-serving-base/haproxy:2.6-bookworm}"
    export MNIST_SERVING_PROMETHEUS_BASE="${MNIST_SERVING_PROMETHEUS_BASE:-mnist-serving-base/prometheus:bookworm}"
fi

if [ -z "${MNIST_SERVING_TORCH_WHEELS:-}" ]; then
    for dir in $(pip config get global.find-links 2>/dev/null || true); do
        if ls "$dir"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
            export MNIST_SERVING_TORCH_WHEELS="$dir"
            echo "images: torch from $dir"
            break
        fi
    done
fi

services=(train server lb prometheus)
if [ -n "${GPU:-}" ]; then services+=(server-gpu); fi
docker compose --profile monitoring --profile gpu build "$@" "${services[@]}"
