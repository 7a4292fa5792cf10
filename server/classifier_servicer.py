"""mnist.v1.Classifier: the codec converts its messages, the data plane classifies.

Admission, errors, metrics and request ids are the data plane's call, via the interceptor.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from mnist_serving.common.contract import IMAGE_SHAPE
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from mnist_serving.server import codec
from mnist_serving.server.calls import status_of
from mnist_serving.server.dataplane import Classified, DataPlane
from mnist_serving.server.ordered_stream import answer_in_order

STREAM_WINDOW = 4  # stream messages in flight at once; bounds memory and gives back-pressure


def batch_response(result: Classified, with_probabilities: bool) -> pb.ClassifyBatchResponse:
    errors = {index: (status_of(error).name, str(error)) for index, error in result.errors.items()}
    return codec.batch_response(
        result.labels,
        result.probabilities,
        result.confidences,
        errors,
        with_probabilities,
        result.model.name,
        result.model.version_str,
    )


class ClassifierServicer(pb_grpc.ClassifierServicer):
    def __init__(self, dataplane: DataPlane, max_request_images: int) -> None:
        self.dataplane = dataplane
        self.max_request_images = max_request_images

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        item = codec.image_item(request.image, "image")
        if isinstance(item, bytes):
            result = await self.dataplane.classify_items(
                request.model_name, request.model_version, [item], field=lambda _: "image"
            )
            if result.errors:
                raise result.errors[0]  # a single image's problem is the call's error
        else:
            result = await self.dataplane.classify(
                request.model_name, request.model_version, item.reshape(1, *IMAGE_SHAPE)
            )
        return pb.ClassifyResponse(
            prediction=codec.prediction(
                result.probabilities[0], int(result.labels[0]), request.return_probabilities
            ),
            model_name=result.model.name,
            model_version=result.model.version_str,
            preprocessed=result.images[0].tobytes() if request.return_preprocessed else b"",
        )

    async def _batch(self, request: pb.ClassifyBatchRequest) -> pb.ClassifyBatchResponse:
        items = codec.batch_items(request, self.max_request_images)
        name, version = request.model_name, request.model_version
        if isinstance(items, np.ndarray):
            result = await self.dataplane.classify(name, version, items)
        else:
            result = await self.dataplane.classify_items(name, version, items)
        response = batch_response(result, request.return_probabilities)
        if result.times is not None:  # a stream's message is answered before its call ends
            result.times.answered = time.perf_counter()
        return response

    async def ClassifyBatch(
        self, request: pb.ClassifyBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyBatchResponse:
        return await self._batch(request)

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyBatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyBatchResponse]:
        """Answers in order as soon as each is ready, with at most STREAM_WINDOW messages in work."""
        async for response in answer_in_order(request_iterator, self._batch, STREAM_WINDOW):
            yield response
