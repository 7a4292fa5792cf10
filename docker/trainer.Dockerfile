# syntax=docker/dockerfile:1
# mnist-train and mnist-export: torch (CPU build), onnx, onnxruntime.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common/ common/
COPY train/ train/
COPY export/ export/
COPY server/ server/
COPY client/ client/
COPY protos/ protos/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && /opt/venv/bin/pip install --no-cache-dir ".[train]"

FROM python:3.11.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin mnist
USER 10001
WORKDIR /home/mnist
ENV PATH=/opt/venv/bin:$PATH \
    MNIST_SERVING_CACHE=/cache \
    PYTHONUNBUFFERED=1
CMD ["mnist-train", "--help"]
