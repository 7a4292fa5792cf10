"""Client library: ``Client`` (blocking) and ``AsyncClient`` (asyncio) for mnist-serving.

Both speak the own API (mnist.v1), cut big inputs into chunks that are sent several at a
time, retry UNAVAILABLE with exponential backoff, and take TLS and token options.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_serving.client.inputs import ImageLike, batch_requests, to_image
from mnist_serving.client.results import BatchResult, ClassifyError, Prediction
from mnist_serving.common.contract import IMAGE_PIXELS, IMAGE_SHAPE, MODEL_NAME, NUM_CLASSES
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc

DEFAULT_SERVER = "localhost:50051"
MAX_MESSAGE = 256 * 1024 * 1024
RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 2000


@dataclass(frozen=True)
class ClientOptions:
    """Connection settings shared by both clients."""

    server: str = ""
    timeout: float | None = 30.0  # per call, seconds
    retries: int = 3  # extra attempts on UNAVAILABLE
    backoff: float = 0.1  # first retry delay, doubled each time (with jitter)
    tls: bool = False
    root_certificates: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    token: str | None = None

    @property
    def target(self) -> str:
        return self.server or os.environ.get("MNIST_SERVING_SERVER") or DEFAULT_SERVER

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # After a replica dies, reconnect (to it or, through a balancer, to another) from
            # 100 ms on, not gRPC's default 1 s-and-growing, so retries find a live server.
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not (self.tls or self.root_certificates or self.client_certificate):
            return None

        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            read(self.root_certificates), read(self.client_key), read(self.client_certificate)
        )

    def open_channel(self, api: object) -> object:
        """A channel from ``grpc`` (blocking) or ``grpc.aio``, secure when TLS is configured."""
        credentials = self.credentials()
        if credentials is not None:
            return api.secure_channel(self.target, credentials, self.channel_options())
        return api.insecure_channel(self.target, self.channel_options())

    def metadata(self) -> tuple[tuple[str, str], ...]:
        auth = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return auth + _trace_context()


try:  # a caller with OpenTelemetry: its current trace goes along (W3C traceparent)
    from opentelemetry import propagate as _propagate
except ImportError:  # pragma: no cover - the plain client does not need it
    _propagate = None


def _trace_context() -> tuple[tuple[str, str], ...]:
    if _propagate is None:
        return ()
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return tuple(carrier.items())


def _error(exc: grpc.RpcError) -> ClassifyError:
    return ClassifyError(exc.code().name, exc.details() or "")


def _classify_request(
    image: ImageLike, probabilities: bool, model: str, version: str, preprocessed: bool
) -> pb.ClassifyRequest:
    """One request for the sync and the asyncio client alike."""
    return pb.ClassifyRequest(
        image=to_image(image),
        model_name=model,
        model_version=version,
        return_probabilities=probabilities,
        return_preprocessed=preprocessed,
    )


def _prediction(response: pb.ClassifyResponse) -> Prediction:
    p = response.prediction
    probabilities = np.asarray(p.probabilities, dtype=np.float32) if len(p.probabilities) else None
    seen = None
    if len(response.preprocessed) == IMAGE_PIXELS:
        seen = np.frombuffer(response.preprocessed, dtype=np.uint8).reshape(IMAGE_SHAPE)
    return Prediction(p.label, p.confidence, probabilities, response.model_name, response.model_version, seen)


def _merge(responses: Sequence[pb.ClassifyBatchResponse], probabilities: bool) -> BatchResult:
    labels = np.concatenate([np.frombuffer(r.labels, dtype=np.uint8) for r in responses]).astype(np.int64)
    confidences = np.concatenate([np.frombuffer(r.confidences, dtype="<f4") for r in responses])
    probs = None
    if probabilities:
        probs = np.concatenate(
            [np.frombuffer(r.probabilities, dtype="<f4").reshape(-1, NUM_CLASSES) for r in responses]
        )
    errors: dict[int, str] = {}
    offset = 0
    for response in responses:
        for error in response.errors:
            errors[offset + error.index] = f"{error.code}: {error.message}"
        offset += response.count
    labels[list(errors)] = -1  # the server's NO_LABEL byte: not classified
    last = responses[-1] if responses else pb.ClassifyBatchResponse()
    return BatchResult(labels, confidences, probs, last.model_name, last.model_version, errors)


def _retryable(exc: grpc.RpcError) -> bool:
    """Transient: a replica going away, or an overloaded one (both pass with a little backoff)."""
    return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class Client:
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(self, server: str = "", **options: object) -> None:
        self.options = ClientOptions(server=server, **options)
        self.channel = self.options.open_channel(grpc)
        self.stub = pb_grpc.ClassifierStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        # Attempts repeated after UNAVAILABLE: what a failover cost, for callers' own metrics.
        self.retries_made = 0

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Callable, request: object, timeout: float | None = None) -> object:
        attempt = 0
        while True:
            try:
                return method(
                    request, timeout=timeout or self.options.timeout, metadata=self.options.metadata()
                )
            except grpc.RpcError as exc:
                if not _retryable(exc) or attempt >= self.options.retries:
                    raise _error(exc) from None
                time.sleep(self.options.backoff * (2**attempt) * (0.5 + random.random()))
                attempt += 1
                self.retries_made += 1

    def classify(
        self,
        image: ImageLike,
        probabilities: bool = False,
        model: str = "",
        version: str = "",
        preprocessed: bool = False,
    ) -> Prediction:
        """``preprocessed``: also return the 28×28 image the model saw (``Prediction.preprocessed``)."""
        request = _classify_request(image, probabilities, model, version, preprocessed)
        return _prediction(self._call(self.stub.Classify, request))

    def classify_batch(
        self,
        images: np.ndarray | Sequence[ImageLike],
        batch_size: int = 1024,
        concurrency: int = 4,
        probabilities: bool = False,
        model: str = "",
        version: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> BatchResult:
        """Chunks of ``batch_size`` images, ``concurrency`` of them in flight at once, in order."""
        requests = batch_requests(images, batch_size, model, version, probabilities)
        window: collections.deque = collections.deque()
        responses: list[pb.ClassifyBatchResponse] = []

        def finish(entry: tuple) -> None:
            future, request = entry
            try:
                response = future.result()
            except grpc.RpcError as exc:
                if not _retryable(exc):
                    raise _error(exc) from None
                response = self._call(self.stub.ClassifyBatch, request)
            responses.append(response)
            if progress is not None:
                progress(response.count)

        for request in requests:
            future = self.stub.ClassifyBatch.future(
                request, timeout=self.options.timeout, metadata=self.options.metadata()
            )
            window.append((future, request))
            if len(window) >= concurrency:
                finish(window.popleft())
        while window:
            finish(window.popleft())
        return _merge(responses, probabilities)

    def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING', ... for the server ('') or a service name."""
        response = self._call(self.health_stub.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def server_metadata(self) -> v2.ServerMetadataResponse:
        return self._call(self.v2.ServerMetadata, v2.ServerMetadataRequest())

    def preprocessing_version(self, name: str = MODEL_NAME) -> str | None:
        """The server's preprocessing version (None from a server that does not say)."""
        parameters = self.model_metadata(name).parameters
        return (
            parameters["preprocessing_version"].string_param
            if "preprocessing_version" in parameters
            else None
        )

    def model_metadata(self, name: str = MODEL_NAME, version: str = "") -> v2.ModelMetadataResponse:
        return self._call(self.v2.ModelMetadata, v2.ModelMetadataRequest(name=name, version=version))


class AsyncClient:
    """asyncio client with the same methods as Client (awaitable)."""

    def __init__(self, server: str = "", **options: object) -> None:
        self.options = ClientOptions(server=server, **options)
        self.channel = self.options.open_channel(grpc.aio)
        self.stub = pb_grpc.ClassifierStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        # Attempts repeated after UNAVAILABLE: what a failover cost, for callers' own metrics.
        self.retries_made = 0

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, method: Callable, request: object) -> object:
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self.options.timeout, metadata=self.options.metadata())
            except grpc.RpcError as exc:
                if not _retryable(exc) or attempt >= self.options.retries:
                    raise _error(exc) from None
                await asyncio.sleep(self.options.backoff * (2**attempt) * (0.5 + random.random()))
                attempt += 1
                self.retries_made += 1

    async def classify(
        self,
        image: ImageLike,
        probabilities: bool = False,
        model: str = "",
        version: str = "",
        preprocessed: bool = False,
    ) -> Prediction:
        """``preprocessed``: also return the 28×28 image the model saw (``Prediction.preprocessed``)."""
        request = _classify_request(image, probabilities, model, version, preprocessed)
        return _prediction(await self._call(self.stub.Classify, request))

    async def classify_batch(
        self,
        images: np.ndarray | Sequence[ImageLike],
        batch_size: int = 1024,
        concurrency: int = 4,
        probabilities: bool = False,
        model: str = "",
        version: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> BatchResult:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(request: pb.ClassifyBatchRequest) -> pb.ClassifyBatchResponse:
            async with semaphore:
                response = await self._call(self.stub.ClassifyBatch, request)
            if progress is not None:
                progress(response.count)
            return response

        requests = list(batch_requests(images, batch_size, model, version, probabilities))
        responses = await asyncio.gather(*(one(r) for r in requests))
        return _merge(responses, probabilities)

    async def health(self, service: str = "") -> str:
        response = await self._call(self.health_stub.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def server_metadata(self) -> v2.ServerMetadataResponse:
        return await self._call(self.v2.ServerMetadata, v2.ServerMetadataRequest())

    async def model_metadata(self, name: str = MODEL_NAME, version: str = "") -> v2.ModelMetadataResponse:
        return await self._call(self.v2.ModelMetadata, v2.ModelMetadataRequest(name=name, version=version))
