# mnist-serve on NVIDIA GPUs: onnxruntime-gpu on a CUDA 12 / cuDNN 9 runtime. No torch.
# CUDA_BASE: the NVIDIA runtime image or a registry mirror's copy (no offline stand-in:
# CUDA is not in Debian's main archive).
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_BASE} AS base
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY common/ common/
COPY train/ train/
COPY export/ export/
COPY server/ server/
COPY client/ client/
COPY protos/ protos/
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ".[serve-gpu,client]"

FROM base
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mnist \
    && mkdir -p /models \
    && chown 10001:10001 /models
USER 10001
ENV PATH=/opt/venv/bin:$PATH \
    MNIST_SERVING_MODEL_REPOSITORY=/models \
    MNIST_SERVING_DEVICE=cuda \
    MNIST_SERVING_PORT=50051 \
    MNIST_SERVING_METRICS_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 8080 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=3 \
    CMD ["mnist-classify", "health", "--server", "localhost:50051", "--retries", "0", "--timeout", "3"]
ENTRYPOINT ["mnist-serve"]
