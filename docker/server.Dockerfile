# syntax=docker/dockerfile:1
# mnist-serve: onnxruntime (CPU), grpcio and the server. No torch.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common/ common/
COPY train/ train/
COPY export/ export/
COPY server/ server/
COPY client/ client/
COPY protos/ protos/
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[serve,client]"

FROM python:3.11.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "mnist-serving[serve,client]==0.1.0" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mnist
USER 10001
ENV MNIST_SERVING_MODEL_REPOSITORY=/models \
    MNIST_SERVING_PORT=50051 \
    MNIST_SERVING_METRICS_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 8000
# The gRPC health protocol, not a TCP poke: SERVING only once the model is loaded and warm.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["mnist-classify", "health", "--server", "localhost:50051", "--retries", "0", "--timeout", "3"]
ENTRYPOINT ["mnist-serve"]
