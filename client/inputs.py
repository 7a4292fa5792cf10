"""Anything a caller may pass as images → protobuf messages (no image decoder imported)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mnist_serving.common.contract import IMAGE_HEIGHT, IMAGE_SHAPE, IMAGE_WIDTH, pixels_from_unit_floats
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb

ImageLike = object  # str | Path | bytes | numpy array | PIL.Image.Image


def _array_image(array: np.ndarray) -> pb.Image:
    if array.shape != IMAGE_SHAPE:
        raise ValueError(f"array image has shape {array.shape}; expected {IMAGE_SHAPE}")
    if array.dtype == np.uint8:
        return pb.Image(raw=np.ascontiguousarray(array).tobytes())
    if np.issubdtype(array.dtype, np.floating):
        return pb.Image(pixels=pb.FloatPixels(values=array.astype(np.float32).ravel().tolist()))
    raise ValueError(f"array image has dtype {array.dtype}; expected uint8 or float in [0, 1]")


def preprocess_image(item: str | Path | bytes) -> np.ndarray:
    """An encoded image (path or bytes) → the 28×28 uint8 digit the server would make of it.

    The same pipeline as the server's (``mnist_serving.common.preprocess``), so a caller can
    decode where the data is and send raw pixels; compare ``PREPROCESSING_VERSION`` with the
    server's (``Client.preprocessing_version()``) first. Raises ``ImageError`` (its subclass
    ``NoDigitFound`` for a blank image).
    """
    from mnist_serving.common import preprocess  # the image stack loads only for callers who decode

    data = Path(item).read_bytes() if isinstance(item, (str, Path)) else bytes(item)
    return preprocess.decode(data)[0]


def to_image(item: ImageLike) -> pb.Image:
    """One image: a path or bytes (encoded file), a uint8/float [28,28] array or a PIL image."""
    if isinstance(item, pb.Image):
        return item
    if isinstance(item, (str, Path)):
        return pb.Image(encoded=Path(item).read_bytes())
    if isinstance(item, (bytes, bytearray, memoryview)):
        return pb.Image(encoded=bytes(item))
    if isinstance(item, np.ndarray):
        return _array_image(item)
    if type(item).__module__.startswith("PIL."):
        import io

        if item.size == (IMAGE_WIDTH, IMAGE_HEIGHT) and item.mode == "L":
            return pb.Image(raw=np.asarray(item, dtype=np.uint8).tobytes())
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return pb.Image(encoded=buffer.getvalue())
    raise TypeError(f"cannot send {type(item).__name__} as an image")


def batch_requests(
    images: np.ndarray | Sequence[ImageLike],
    chunk: int,
    model_name: str = "",
    model_version: str = "",
    probabilities: bool = False,
) -> Iterable[pb.ClassifyBatchRequest]:
    """Cut a batch into requests of at most ``chunk`` images; uint8 arrays travel packed."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        if images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(
                f"array batch has shape {images.shape}; expected (N, {IMAGE_HEIGHT}, {IMAGE_WIDTH})"
            )
        if images.dtype != np.uint8:
            if not np.issubdtype(images.dtype, np.floating):
                raise ValueError(f"array batch has dtype {images.dtype}; expected uint8 or float")
            images = to_uint8(images)
        data = np.ascontiguousarray(images)
        for start in range(0, len(data), chunk):
            part = data[start : start + chunk]
            yield pb.ClassifyBatchRequest(
                raw=pb.RawBatch(data=part.tobytes(), count=len(part)),
                model_name=model_name,
                model_version=model_version,
                return_probabilities=probabilities,
            )
        return
    items = list(images)
    for start in range(0, len(items), chunk):
        yield pb.ClassifyBatchRequest(
            images=[to_image(item) for item in items[start : start + chunk]],
            model_name=model_name,
            model_version=model_version,
            return_probabilities=probabilities,
        )


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0,1] → uint8 pixels, exactly as the server converts them."""
    try:
        return pixels_from_unit_floats(images)
    except ValueError as exc:
        raise ValueError(f"float images: {exc}") from None
