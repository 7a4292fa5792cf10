"""mnist.v1.Classifier: its messages ⇄ arrays, and the data plane in between.

Every wire-format rule of the own API lives here, and every refusal names the field and
what was expected. Decoding uses ``numpy.frombuffer`` (a view, no per-pixel Python).
Admission, errors, metrics and request ids are the data plane's, via the interceptor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np

from mnist_serving.common.contract import IMAGE_PIXELS, IMAGE_SHAPE
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from mnist_serving.server.dataplane import (
    Classified,
    DataPlane,
    Item,
    check_count,
    float_to_pixels,
    status_of,
)
from mnist_serving.server.errors import InvalidInput

STREAM_WINDOW = 4  # stream messages in flight at once; bounds memory and gives back-pressure


def image_item(image: pb.Image, field: str) -> Item:
    """One Image message → pixels, or encoded bytes for the data plane to decode."""
    kind = image.WhichOneof("data")
    if kind == "raw":
        if len(image.raw) != IMAGE_PIXELS:
            raise InvalidInput(
                f"{field}.raw: {len(image.raw)} bytes; expected {IMAGE_PIXELS} "
                f"({IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} uint8, row-major)"
            )
        return np.frombuffer(image.raw, dtype=np.uint8).reshape(IMAGE_SHAPE)
    if kind == "encoded":
        return image.encoded
    if kind == "pixels":
        values = np.asarray(image.pixels.values, dtype=np.float32)
        if values.size != IMAGE_PIXELS:
            raise InvalidInput(f"{field}.pixels.values: {values.size} values; expected {IMAGE_PIXELS}")
        return float_to_pixels(values, f"{field}.pixels.values").reshape(IMAGE_SHAPE)
    raise InvalidInput(f"{field}: no data; set one of raw, encoded or pixels")


def batch_items(request: pb.ClassifyBatchRequest, max_images: int) -> np.ndarray | list[Item]:
    """A batch as one uint8 [N,28,28] array (packed raw), or as items decoded one by one."""
    has_raw = request.HasField("raw")
    if has_raw and len(request.images):
        raise InvalidInput("raw, images: both set; send either a packed raw batch or a list of images")
    if has_raw:
        data, count = request.raw.data, request.raw.count
        if count == 0 and len(data) % IMAGE_PIXELS == 0:
            count = len(data) // IMAGE_PIXELS
        check_count(count, max_images, "raw")
        if len(data) != count * IMAGE_PIXELS:
            raise InvalidInput(
                f"raw.data: {len(data)} bytes; expected count x {IMAGE_PIXELS} = {count * IMAGE_PIXELS}"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(count, *IMAGE_SHAPE)
    images = request.images
    check_count(len(images), max_images, "images")
    if all(image.WhichOneof("data") == "raw" and len(image.raw) == IMAGE_PIXELS for image in images):
        joined = b"".join(image.raw for image in images)
        return np.frombuffer(joined, dtype=np.uint8).reshape(len(images), *IMAGE_SHAPE)
    items: list[Item] = []
    for i, image in enumerate(images):
        try:
            items.append(image_item(image, f"images[{i}]"))
        except InvalidInput as exc:
            items.append(exc)
    return items


def prediction(probabilities: np.ndarray, label: int, with_probabilities: bool) -> pb.Prediction:
    result = pb.Prediction(label=int(label), confidence=float(probabilities[label]))
    if with_probabilities:
        result.probabilities.extend(probabilities.tolist())
    return result


def batch_response(result: Classified, with_probabilities: bool) -> pb.ClassifyBatchResponse:
    probabilities = result.probabilities
    response = pb.ClassifyBatchResponse(
        labels=result.labels.astype(np.uint8).tobytes(),
        probabilities=probabilities.astype("<f4").tobytes() if with_probabilities else b"",
        confidences=result.confidences.astype("<f4").tobytes(),
        count=len(result.labels),
        model_name=result.model.name,
        model_version=result.model.version_str,
    )
    for index in sorted(result.errors):
        error = result.errors[index]
        response.errors.add(index=index, code=status_of(error).name, message=str(error))
    return response


class ClassifierServicer(pb_grpc.ClassifierServicer):
    def __init__(self, dataplane: DataPlane, max_request_images: int) -> None:
        self.dataplane = dataplane
        self.max_request_images = max_request_images

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        item = image_item(request.image, "image")
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
            prediction=prediction(
                result.probabilities[0], int(result.labels[0]), request.return_probabilities
            ),
            model_name=result.model.name,
            model_version=result.model.version_str,
            preprocessed=result.images[0].tobytes() if request.return_preprocessed else b"",
        )

    async def _batch(self, request: pb.ClassifyBatchRequest) -> pb.ClassifyBatchResponse:
        items = batch_items(request, self.max_request_images)
        name, version = request.model_name, request.model_version
        if isinstance(items, np.ndarray):
            result = await self.dataplane.classify(name, version, items)
        else:
            result = await self.dataplane.classify_items(name, version, items)
        return batch_response(result, request.return_probabilities)

    async def ClassifyBatch(
        self, request: pb.ClassifyBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyBatchResponse:
        return await self._batch(request)

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyBatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyBatchResponse]:
        """Answers in order as soon as each is ready, with at most STREAM_WINDOW messages in work.

        Reading and answering run concurrently, so a caller that waits for each answer before
        sending the next message (ping-pong) is served, and one that sends ahead is held back
        by the bounded window (and gRPC flow control) rather than buffered without limit.
        """
        window: asyncio.Queue[asyncio.Future | None] = asyncio.Queue(maxsize=STREAM_WINDOW)

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    await window.put(asyncio.ensure_future(self._batch(request)))
            finally:
                await window.put(None)

        reader = asyncio.ensure_future(read_requests())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await reader  # surfaces a failure while reading the request stream
        finally:
            reader.cancel()
            while not window.empty():
                task = window.get_nowait()
                if task is not None:
                    task.cancel()
