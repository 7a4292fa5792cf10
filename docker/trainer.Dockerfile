# mnist-train and mnist-export: torch (CPU build), onnx, onnxruntime.
# PYTHON_BASE: see server.Dockerfile. torch comes from the named build context
# `torch-wheels` when it holds a torch 2.13.0 CPU wheel (offline, air-gapped), else from
# TORCH_INDEX_URL (the PyTorch CPU index, or a mirror of it).
ARG PYTHON_BASE=python:3.11.11-slim-bookworm
FROM ${PYTHON_BASE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY common/ common/
COPY train/ train/
COPY export/ export/
COPY server/ server/
COPY client/ client/
COPY protos/ protos/
RUN --mount=type=secret,id=ca_bundle \
    --mount=type=bind,from=torch-wheels,target=/torch-wheels \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python3 -m venv /opt/venv \
    && if ls /torch-wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install --no-cache-dir --find-links /torch-wheels "torch==2.13.0+cpu"; \
    else \
        /opt/venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==2.13.0"; \
    fi \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ".[train]"

FROM ${PYTHON_BASE}
COPY --from=build /opt/venv /opt/venv
# The mount points are created owned by the job's user, so fresh named volumes are too.
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin mnist \
    && mkdir -p /models /runs /cache \
    && chown 10001:10001 /models /runs /cache
USER 10001
WORKDIR /home/mnist
ENV PATH=/opt/venv/bin:$PATH \
    MNIST_SERVING_CACHE=/cache \
    PYTHONUNBUFFERED=1
CMD ["mnist-train", "--help"]
