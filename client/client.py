"""Client library: ``AsyncClient`` (asyncio) and ``Client`` (blocking) for mnist-serving.

One implementation: ``AsyncClient`` holds every call, retry, deadline and window, and
``Client`` drives a private ``AsyncClient`` on its own thread, so the two cannot drift.
Calls retry UNAVAILABLE and RESOURCE_EXHAUSTED (a replica going away, an overloaded one) and
UNKNOWN (a call cut off in transport, such as a proxy's reset when a replica dies: the server
itself never answers UNKNOWN, and every call is safe to repeat), with exponential backoff (at
most 2 s) and jitter, within the call's deadline; any other status raises ``ClassifyError``
at once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_serving.client.inputs import ImageLike, batch_requests, to_image
from mnist_serving.client.options import DEFAULT_SERVER, MAX_BACKOFF, ClientOptions
from mnist_serving.client.results import BatchResult, ClassifyError, Prediction
from mnist_serving.common.contract import IMAGE_PIXELS, IMAGE_SHAPE, MODEL_NAME, NUM_CLASSES
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_SERVER", "AsyncClient", "Client", "ClientOptions"]

T = TypeVar("T")
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN)


def _prediction(response: pb.ClassifyResponse) -> Prediction:
    p = response.prediction
    probabilities = np.asarray(p.probabilities, dtype=np.float32) if len(p.probabilities) else None
    seen = None
    if len(response.preprocessed) == IMAGE_PIXELS:
        seen = np.frombuffer(response.preprocessed, dtype=np.uint8).reshape(IMAGE_SHAPE)
    return Prediction(p.label, p.confidence, probabilities, response.model_name, response.model_version, seen)


def _merge(responses: Sequence[pb.ClassifyBatchResponse], probabilities: bool) -> BatchResult:
    labels = np.concatenate(
        [np.frombuffer(r.labels, dtype=np.uint8) for r in responses] or [np.zeros(0, np.uint8)]
    ).astype(np.int64)
    confidences = np.concatenate(
        [np.frombuffer(r.confidences, dtype="<f4") for r in responses] or [np.zeros(0, np.float32)]
    )
    probs = None
    if probabilities:
        probs = np.concatenate(
            [np.frombuffer(r.probabilities, dtype="<f4").reshape(-1, NUM_CLASSES) for r in responses]
            or [np.zeros((0, NUM_CLASSES), np.float32)]
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


class AsyncClient:
    """asyncio client. Every method takes ``timeout=`` (seconds; None: the client's option,
    ``math.inf``: no deadline) and ``retries=`` (None: the client's option).

    ``timeout`` is one deadline for the call and its retries; in ``classify_batch`` it holds
    for each chunk, so a million images are not bound by one deadline.
    """

    def __init__(self, server: str = "", **options: object) -> None:
        self.options = ClientOptions(server=server, **options)
        self.channel = self.options.open_aio_channel()
        self.stub = pb_grpc.ClassifierStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        # Attempts repeated after a retried status: what failovers cost, for callers' metrics.
        self.retries_made = 0

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _call(
        self, method: Callable[..., Awaitable[T]], request: object, timeout: float | None, retries: int | None
    ) -> T:
        """The one place calls are made: deadline, metadata, retries with backoff, errors."""
        timeout = self.options.timeout if timeout is None else timeout
        deadline = None if timeout is None or math.isinf(timeout) else time.monotonic() + timeout
        retries = self.options.retries if retries is None else retries
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await method(request, timeout=remaining, metadata=self.options.metadata())
            except grpc.RpcError as exc:
                code = exc.code()
                delay = min(self.options.backoff * 2**attempt, MAX_BACKOFF) * (0.5 + random.random())
                out_of_time = deadline is not None and time.monotonic() + delay >= deadline
                if code not in RETRIED or attempt >= retries or out_of_time:
                    raise ClassifyError(code.name, exc.details() or "") from None
            await asyncio.sleep(delay)
            attempt += 1
            self.retries_made += 1

    async def classify(
        self,
        image: ImageLike,
        probabilities: bool = False,
        model: str = "",
        version: str = "",
        preprocessed: bool = False,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Prediction:
        """``preprocessed``: also return the 28×28 image the model saw (``Prediction.preprocessed``)."""
        request = pb.ClassifyRequest(
            image=to_image(image),
            model_name=model,
            model_version=version,
            return_probabilities=probabilities,
            return_preprocessed=preprocessed,
        )
        return _prediction(await self._call(self.stub.Classify, request, timeout, retries))

    async def classify_batch(
        self,
        images: np.ndarray | Sequence[ImageLike],
        batch_size: int = 1024,
        concurrency: int = 4,
        probabilities: bool = False,
        model: str = "",
        version: str = "",
        progress: Callable[[int], None] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> BatchResult:
        """Chunks of ``batch_size`` images, at most ``concurrency`` in flight, answers in order.

        Requests are built as the window moves, so memory holds ``concurrency`` chunks.
        """
        if batch_size < 1 or concurrency < 1:
            raise ValueError(f"batch_size and concurrency must be at least 1: {batch_size}, {concurrency}")
        window: collections.deque[asyncio.Task] = collections.deque()
        responses: list[pb.ClassifyBatchResponse] = []

        async def settle() -> None:
            response = await window.popleft()
            responses.append(response)
            if progress is not None:
                progress(response.count)

        try:
            for request in batch_requests(images, batch_size, model, version, probabilities):
                call = self._call(self.stub.ClassifyBatch, request, timeout, retries)
                window.append(asyncio.ensure_future(call))
                if len(window) >= concurrency:
                    await settle()
            while window:
                await settle()
        finally:
            for task in window:  # a failed chunk or a cancelled caller: the rest stop too
                task.cancel()
        return _merge(responses, probabilities)

    async def health(
        self, service: str = "", *, timeout: float | None = None, retries: int | None = None
    ) -> str:
        """'SERVING', 'NOT_SERVING', ... for the server ('') or a service name."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._call(self.health_stub.Check, request, timeout, retries)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def server_metadata(
        self, *, timeout: float | None = None, retries: int | None = None
    ) -> v2.ServerMetadataResponse:
        return await self._call(self.v2.ServerMetadata, v2.ServerMetadataRequest(), timeout, retries)

    async def model_metadata(
        self,
        name: str = MODEL_NAME,
        version: str = "",
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> v2.ModelMetadataResponse:
        request = v2.ModelMetadataRequest(name=name, version=version)
        return await self._call(self.v2.ModelMetadata, request, timeout, retries)

    async def preprocessing_version(
        self, name: str = MODEL_NAME, *, timeout: float | None = None, retries: int | None = None
    ) -> str | None:
        """The server's preprocessing version (None from a server that does not say)."""
        parameters = (await self.model_metadata(name, timeout=timeout, retries=retries)).parameters
        if "preprocessing_version" not in parameters:
            return None
        return parameters["preprocessing_version"].string_param


class Client:
    """Blocking client: the same methods as ``AsyncClient``, run on a private event loop.

    Thread-safe: many threads may call one ``Client`` at once. A ``progress`` callback runs
    on the client's thread. Use as a context manager, or call ``close()``.
    """

    POLL_S = 0.2  # a waiting caller wakes this often, so Ctrl-C reaches it whatever thread got it

    def __init__(self, server: str = "", **options: object) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mnist-serving-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(server, **options)

        try:
            self._core = asyncio.run_coroutine_threadsafe(make(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise
        self.options = self._core.options

    @property
    def retries_made(self) -> int:
        return self._core.retries_made

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coroutine: Awaitable[T]) -> T:
        """Run on the client's loop in the caller's context (its trace goes along), and wait."""
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("the client is closed")
        context = contextvars.copy_context()
        done: concurrent.futures.Future = concurrent.futures.Future()
        started: list[asyncio.Task] = []

        def start() -> None:
            if not done.set_running_or_notify_cancel():
                coroutine.close()
                return
            task = self._loop.create_task(coroutine, context=context)
            started.append(task)

            def finish(task: asyncio.Task) -> None:
                if task.cancelled():
                    done.cancel()
                elif task.exception() is not None:
                    done.set_exception(task.exception())
                else:
                    done.set_result(task.result())

            task.add_done_callback(finish)

        self._loop.call_soon_threadsafe(start)
        try:
            while True:
                try:
                    return done.result(timeout=self.POLL_S)
                except concurrent.futures.TimeoutError:
                    continue
        except BaseException:  # KeyboardInterrupt and the like: the call stops too
            if not done.cancel():
                self._loop.call_soon_threadsafe(lambda: [t.cancel() for t in started])
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._core.close(), self._loop).result(timeout=5)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def classify(
        self,
        image: ImageLike,
        probabilities: bool = False,
        model: str = "",
        version: str = "",
        preprocessed: bool = False,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Prediction:
        """``preprocessed``: also return the 28×28 image the model saw (``Prediction.preprocessed``)."""
        return self._run(
            self._core.classify(
                image, probabilities, model, version, preprocessed, timeout=timeout, retries=retries
            )
        )

    def classify_batch(
        self,
        images: np.ndarray | Sequence[ImageLike],
        batch_size: int = 1024,
        concurrency: int = 4,
        probabilities: bool = False,
        model: str = "",
        version: str = "",
        progress: Callable[[int], None] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> BatchResult:
        """Chunks of ``batch_size`` images, at most ``concurrency`` in flight, answers in order."""
        return self._run(
            self._core.classify_batch(
                images,
                batch_size,
                concurrency,
                probabilities,
                model,
                version,
                progress,
                timeout=timeout,
                retries=retries,
            )
        )

    def health(self, service: str = "", *, timeout: float | None = None, retries: int | None = None) -> str:
        """'SERVING', 'NOT_SERVING', ... for the server ('') or a service name."""
        return self._run(self._core.health(service, timeout=timeout, retries=retries))

    def server_metadata(
        self, *, timeout: float | None = None, retries: int | None = None
    ) -> v2.ServerMetadataResponse:
        return self._run(self._core.server_metadata(timeout=timeout, retries=retries))

    def model_metadata(
        self,
        name: str = MODEL_NAME,
        version: str = "",
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> v2.ModelMetadataResponse:
        return self._run(self._core.model_metadata(name, version, timeout=timeout, retries=retries))

    def preprocessing_version(
        self, name: str = MODEL_NAME, *, timeout: float | None = None, retries: int | None = None
    ) -> str | None:
        """The server's preprocessing version (None from a server that does not say)."""
        return self._run(self._core.preprocessing_version(name, timeout=timeout, retries=retries))
