# mnist-serve: onnxruntime (CPU), grpcio and the server. No torch.
# PYTHON_BASE: any Debian-based image with python3 3.11 and venv (the official one, a
# registry mirror's copy, or the offline stand-in from docker/base/build-offline.sh).
ARG PYTHON_BASE=python:3.11.11-slim-bookworm
FROM ${PYTHON_BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY common/ common/
COPY train/ train/
COPY export/ export/
COPY server/ server/
COPY client/ client/
COPY protos/ protos/
# The host's CA bundle (build secret `ca_bundle`, optional) lets pip through TLS-inspecting
# proxies with verification on.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ".[serve,client]"

FROM ${PYTHON_BASE}
COPY --from=build /opt/venv /opt/venv
# /models is created owned by the service user, so a fresh named volume mounted there is too.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mnist \
    && mkdir -p /models \
    && chown 10001:10001 /models
USER 10001
ENV PATH=/opt/venv/bin:$PATH \
    MNIST_SERVING_MODEL_REPOSITORY=/models \
    MNIST_SERVING_PORT=50051 \
    MNIST_SERVING_METRICS_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 8080 8000
# The gRPC health protocol, not a TCP poke: SERVING only once the model is loaded and warm.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["mnist-classify", "health", "--server", "localhost:50051", "--retries", "0", "--timeout", "3"]
ENTRYPOINT ["mnist-serve"]
