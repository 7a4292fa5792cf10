"""Requests ⇄ arrays, for both APIs: every validation rule of the wire formats lives here.

Everything is decoded with ``numpy.frombuffer`` (a view, no per-pixel Python), and every
refusal is an InvalidInput whose message names the field and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mnist_serving.contract import (
    IMAGE_HEIGHT,
    IMAGE_PIXELS,
    IMAGE_WIDTH,
    INPUT,
    NUM_CLASSES,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    pixels_from_unit_floats,
)
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2 as v2
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.server import preprocess
from mnist_serving.server.errors import InvalidInput

OUTPUT_NAMES = (OUTPUT_PROBABILITIES.name, OUTPUT_LABEL.name)


def float_to_pixels(values: np.ndarray, field: str) -> np.ndarray:
    """[0,1] floats → uint8 pixels; NaN, Inf and out-of-range are InvalidInput naming ``field``."""
    try:
        return pixels_from_unit_floats(values)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}") from None


def _check_count(count: int, max_images: int, field: str) -> None:
    if count == 0:
        raise InvalidInput(f"{field}: empty batch; expected at least one image")
    if count > max_images:
        raise InvalidInput(f"{field}: batch of {count} images; at most {max_images} allowed")


# --- own API (mnist.v1) -------------------------------------------------------------------


def decode_image(image: pb.Image, field: str = "image") -> np.ndarray:
    """One Image message → uint8 [28,28]."""
    kind = image.WhichOneof("data")
    if kind == "raw":
        if len(image.raw) != IMAGE_PIXELS:
            raise InvalidInput(
                f"{field}.raw: {len(image.raw)} bytes; expected {IMAGE_PIXELS} (28x28 uint8, row-major)"
            )
        return np.frombuffer(image.raw, dtype=np.uint8).reshape(IMAGE_HEIGHT, IMAGE_WIDTH)
    if kind == "encoded":
        return preprocess.decode(image.encoded, f"{field}.encoded")
    if kind == "pixels":
        values = np.asarray(image.pixels.values, dtype=np.float32)
        if values.size != IMAGE_PIXELS:
            raise InvalidInput(f"{field}.pixels.values: {values.size} values; expected {IMAGE_PIXELS}")
        return float_to_pixels(values, f"{field}.pixels.values").reshape(IMAGE_HEIGHT, IMAGE_WIDTH)
    raise InvalidInput(f"{field}: no data; set one of raw, encoded or pixels")


def decode_batch(request: pb.ClassifyBatchRequest, max_images: int) -> np.ndarray:
    """A ClassifyBatchRequest → uint8 [N,28,28]."""
    has_raw = request.HasField("raw")
    if has_raw and len(request.images):
        raise InvalidInput("raw, images: both set; send either a packed raw batch or a list of images")
    if has_raw:
        data, count = request.raw.data, request.raw.count
        if count == 0 and len(data) % IMAGE_PIXELS == 0:
            count = len(data) // IMAGE_PIXELS
        _check_count(count, max_images, "raw")
        if len(data) != count * IMAGE_PIXELS:
            raise InvalidInput(f"raw.data: {len(data)} bytes; expected count x 784 = {count * IMAGE_PIXELS}")
        return np.frombuffer(data, dtype=np.uint8).reshape(count, IMAGE_HEIGHT, IMAGE_WIDTH)
    images = request.images
    _check_count(len(images), max_images, "images")
    if all(image.WhichOneof("data") == "raw" and len(image.raw) == IMAGE_PIXELS for image in images):
        joined = b"".join(image.raw for image in images)
        return np.frombuffer(joined, dtype=np.uint8).reshape(len(images), IMAGE_HEIGHT, IMAGE_WIDTH)
    return np.stack([decode_image(image, f"images[{i}]") for i, image in enumerate(images)])


def prediction(probabilities: np.ndarray, label: int, with_probabilities: bool) -> pb.Prediction:
    result = pb.Prediction(label=int(label), confidence=float(probabilities[label]))
    if with_probabilities:
        result.probabilities.extend(probabilities.tolist())
    return result


def batch_response(
    probabilities: np.ndarray,
    labels: np.ndarray,
    with_probabilities: bool,
    model_name: str,
    model_version: str,
) -> pb.ClassifyBatchResponse:
    count = len(labels)
    confidences = probabilities[np.arange(count), labels]
    return pb.ClassifyBatchResponse(
        labels=labels.astype(np.uint8).tobytes(),
        probabilities=probabilities.astype("<f4").tobytes() if with_probabilities else b"",
        confidences=confidences.astype("<f4").tobytes(),
        count=count,
        model_name=model_name,
        model_version=model_version,
    )


# --- KServe v2 ----------------------------------------------------------------------------


def _shape_images(shape: Sequence[int], field: str) -> int:
    """Accept [N,28,28] or [N,784]; return N."""
    shape = list(shape)
    if (
        len(shape) == 3
        and shape[1:] == [IMAGE_HEIGHT, IMAGE_WIDTH]
        or len(shape) == 2
        and shape[1] == IMAGE_PIXELS
    ):
        if shape[0] < 0:
            raise InvalidInput(f"{field}: negative batch dimension {shape[0]}")
        return shape[0]
    raise InvalidInput(f"{field}: {shape}; expected [N, 28, 28] or [N, 784]")


def decode_infer_request(
    request: v2.ModelInferRequest, max_images: int
) -> tuple[np.ndarray, bool, tuple[str, ...]]:
    """ModelInferRequest → (uint8 [N,28,28], answer raw?, output names to return)."""
    inputs = request.inputs
    if len(inputs) == 0:
        raise InvalidInput(f"inputs: none given; expected one input '{INPUT.name}' UINT8 [-1, 28, 28]")
    if len(inputs) > 1:
        names = [i.name for i in inputs]
        raise InvalidInput(f"inputs: {names}; expected exactly one input '{INPUT.name}'")
    tensor = inputs[0]
    if tensor.name != INPUT.name:
        raise InvalidInput(
            f"inputs[0].name: '{tensor.name}' is not an input of this model; expected '{INPUT.name}'"
        )
    raw_contents = request.raw_input_contents
    use_raw = len(raw_contents) > 0
    if use_raw and len(raw_contents) != len(inputs):
        raise InvalidInput(f"raw_input_contents: {len(raw_contents)} entries for {len(inputs)} inputs")
    if use_raw and tensor.HasField("contents"):
        raise InvalidInput("inputs[0].contents: set together with raw_input_contents; use one of them")
    count = _shape_images(tensor.shape, "inputs[0].shape")
    _check_count(count, max_images, "inputs[0].shape[0]")
    datatype = tensor.datatype
    if datatype == "UINT8":
        if use_raw:
            data = raw_contents[0]
            if len(data) != count * IMAGE_PIXELS:
                raise InvalidInput(
                    f"raw_input_contents[0]: {len(data)} bytes; shape "
                    f"{list(tensor.shape)} of UINT8 needs {count * IMAGE_PIXELS}"
                )
            images = np.frombuffer(data, dtype=np.uint8)
        else:
            values = np.asarray(tensor.contents.uint_contents, dtype=np.uint32)
            if values.size != count * IMAGE_PIXELS:
                raise InvalidInput(
                    f"inputs[0].contents.uint_contents: {values.size} values; "
                    f"shape {list(tensor.shape)} needs {count * IMAGE_PIXELS}"
                )
            if values.size and values.max() > 255:
                raise InvalidInput("inputs[0].contents.uint_contents: values above 255 for UINT8")
            images = values.astype(np.uint8)
    elif datatype == "FP32":
        if use_raw:
            data = raw_contents[0]
            if len(data) != count * IMAGE_PIXELS * 4:
                raise InvalidInput(
                    f"raw_input_contents[0]: {len(data)} bytes; shape "
                    f"{list(tensor.shape)} of FP32 needs {count * IMAGE_PIXELS * 4}"
                )
            values = np.frombuffer(data, dtype="<f4")
        else:
            values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
            if values.size != count * IMAGE_PIXELS:
                raise InvalidInput(
                    f"inputs[0].contents.fp32_contents: {values.size} values; "
                    f"shape {list(tensor.shape)} needs {count * IMAGE_PIXELS}"
                )
        field = "raw_input_contents[0]" if use_raw else "inputs[0].contents.fp32_contents"
        images = float_to_pixels(values, field)
    else:
        raise InvalidInput(f"inputs[0].datatype: '{datatype}'; expected UINT8 (or FP32 in [0, 1])")
    requested = tuple(o.name for o in request.outputs) or OUTPUT_NAMES
    for i, name in enumerate(requested):
        if name not in OUTPUT_NAMES:
            raise InvalidInput(
                f"outputs[{i}].name: '{name}' is not an output; expected one of {list(OUTPUT_NAMES)}"
            )
    return images.reshape(count, IMAGE_HEIGHT, IMAGE_WIDTH), use_raw, requested


def encode_infer_response(
    request: v2.ModelInferRequest,
    probabilities: np.ndarray,
    labels: np.ndarray,
    raw: bool,
    requested: tuple[str, ...],
    model_name: str,
    model_version: str,
) -> v2.ModelInferResponse:
    """Answer in the request's form: raw bytes for raw requests, typed contents otherwise."""
    response = v2.ModelInferResponse(model_name=model_name, model_version=model_version, id=request.id)
    count = len(labels)
    for name in requested:
        output = response.outputs.add(name=name)
        if name == OUTPUT_PROBABILITIES.name:
            output.datatype, output.shape[:] = "FP32", [count, NUM_CLASSES]
            if raw:
                response.raw_output_contents.append(probabilities.astype("<f4", copy=False).tobytes())
            else:
                output.contents.fp32_contents.extend(probabilities.ravel().tolist())
        else:
            output.datatype, output.shape[:] = "INT64", [count]
            if raw:
                response.raw_output_contents.append(labels.astype("<i8", copy=False).tobytes())
            else:
                output.contents.int64_contents.extend(labels.tolist())
    return response
