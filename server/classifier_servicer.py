"""mnist.v1.Classifier: convert, await the batcher, convert back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from mnist_serving.server import codec
from mnist_serving.server.errors import ServingError
from mnist_serving.server.lifecycle import Lifecycle
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.models import ModelStore
from mnist_serving.server.rpc import deadline_of, failure, request_id, unary

log = logging.getLogger(__name__)
API = "mnist.v1"
STREAM_WINDOW = 4  # stream messages in flight at once; bounds memory and gives back-pressure


class ClassifierServicer(pb_grpc.ClassifierServicer):
    def __init__(
        self, store: ModelStore, metrics: Metrics, max_request_images: int, lifecycle: Lifecycle
    ) -> None:
        self.lifecycle = lifecycle
        self.store = store
        self.metrics = metrics
        self.max_request_images = max_request_images

    @unary(API)
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        model = self.store.get(request.model_name, request.model_version)
        image = codec.decode_image(request.image).reshape(1, 28, 28)
        probabilities, labels = await model.batcher.infer(image, deadline_of(context))
        return pb.ClassifyResponse(
            prediction=codec.prediction(probabilities[0], int(labels[0]), request.return_probabilities),
            model_name=model.name,
            model_version=model.version_str,
        )

    async def _batch(
        self, request: pb.ClassifyBatchRequest, deadline: float | None
    ) -> pb.ClassifyBatchResponse:
        model = self.store.get(request.model_name, request.model_version)
        images = codec.decode_batch(request, self.max_request_images)
        probabilities, labels = await model.batcher.infer(images, deadline)
        return codec.batch_response(
            probabilities, labels, request.return_probabilities, model.name, model.version_str
        )

    @unary(API)
    async def ClassifyBatch(
        self, request: pb.ClassifyBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyBatchResponse:
        return await self._batch(request, deadline_of(context))

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyBatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyBatchResponse]:
        """Answers in order as soon as each is ready, with at most STREAM_WINDOW messages in work.

        Reading and answering run concurrently, so a caller that waits for each answer before
        sending the next message (ping-pong) is served, and one that sends ahead is held back
        by the bounded window (and gRPC flow control) rather than buffered without limit.
        """
        started = time.perf_counter()
        rid = request_id(context)
        code = "OK"
        deadline = deadline_of(context)
        window: asyncio.Queue[asyncio.Future | None] = asyncio.Queue(maxsize=STREAM_WINDOW)
        admitted = False
        reader: asyncio.Task | None = None

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    await window.put(asyncio.ensure_future(self._batch(request, deadline)))
            finally:
                await window.put(None)

        try:
            self.lifecycle.enter()
            admitted = True
            reader = asyncio.ensure_future(read_requests())
            while (task := await window.get()) is not None:
                yield await task
            await reader  # surfaces a failure while reading the request stream
        except ServingError as exc:
            code = exc.code.name
            failure(API, "ClassifyStream", rid, exc, code)
            await context.abort(exc.code, str(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = "INTERNAL"
            failure(API, "ClassifyStream", rid, exc, code)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")
        finally:
            if admitted:
                self.lifecycle.leave()
            if reader is not None:
                reader.cancel()
            while not window.empty():
                task = window.get_nowait()
                if task is not None:
                    task.cancel()
            self.metrics.requests.labels(API, "ClassifyStream", code).inc()
            self.metrics.latency.labels(API, "ClassifyStream").observe(time.perf_counter() - started)
