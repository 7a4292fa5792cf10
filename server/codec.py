"""Every conversion between the wire and numpy, for every API the server speaks.

- the own API (``mnist.v1``): Image and ClassifyBatch messages ⇄ pixels and results;
- KServe v2 over gRPC: typed contents and raw bytes ⇄ arrays;
- KServe v2 over HTTP: JSON, and Triton's binary tensors after the JSON, ⇄ arrays.

Checks come before arrays are made (declared shape × datatype against the data's length),
tensor data goes to numpy in one step (``frombuffer`` for bytes, one ``asarray`` for
numbers; never a round trip through Python lists), and every refusal is an
``InvalidInput`` naming the field in the words of the request that carried it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from mnist_serving.common.contract import (
    IMAGE_HEIGHT,
    IMAGE_PIXELS,
    IMAGE_SHAPE,
    IMAGE_WIDTH,
    INPUT,
    NUM_CLASSES,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    contract_dict,
    pixels_from_unit_floats,
)
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.server.errors import InvalidInput

OUTPUT_NAMES = (OUTPUT_PROBABILITIES.name, OUTPUT_LABEL.name)
HEADER_LENGTH = "inference-header-content-length"  # Triton's binary-data extension
Item = np.ndarray | bytes | InvalidInput
"""One image as a codec hands it to the data plane: uint8 pixels, encoded bytes to decode,
or the conversion error already found in it."""

# --- checks every API shares ------------------------------------------------------------


def check_count(count: int, max_images: int, field: str) -> None:
    if count == 0:
        raise InvalidInput("empty batch; expected at least one image", field)
    if count > max_images:
        raise InvalidInput(f"batch of {count} images; at most {max_images} allowed", field)


def float_to_pixels(values: np.ndarray, field: str) -> np.ndarray:
    """[0,1] floats → uint8 pixels; NaN, Inf and out-of-range are InvalidInput naming ``field``."""
    try:
        return pixels_from_unit_floats(values)
    except ValueError as exc:
        raise InvalidInput(str(exc), field) from None


def image_count(shape: Sequence[int], field: str) -> int:
    """Accept [N,28,28] or [N,784]; return N."""
    shape = list(shape)
    if len(shape) == 3 and shape[1:] == [IMAGE_HEIGHT, IMAGE_WIDTH] or len(shape) == 2 and shape[1] == 784:
        if shape[0] < 0:
            raise InvalidInput(f"negative batch dimension {shape[0]}", field)
        return shape[0]
    raise InvalidInput(f"{shape[:8]}; expected [N, 28, 28] or [N, 784]", field)


def input_tensor(names: Sequence[str]) -> None:
    """Exactly one input, the model's."""
    if len(names) == 0:
        raise InvalidInput(f"none given; expected one input '{INPUT.name}' UINT8 [-1, 28, 28]", "inputs")
    if len(names) > 1:
        shown = [name[:40] for name in names[:8]] + ([f"... {len(names) - 8} more"] if len(names) > 8 else [])
        raise InvalidInput(f"{shown}; expected exactly one input '{INPUT.name}'", "inputs")
    if names[0] != INPUT.name:
        raise InvalidInput(
            f"'{names[0][:100]}' is not an input of this model; expected '{INPUT.name}'", "inputs[0].name"
        )


def requested_outputs(names: Sequence[str]) -> tuple[str, ...]:
    """The outputs to answer with: all of them when none is named; each at most once."""
    for i, name in enumerate(names):
        if name not in OUTPUT_NAMES:
            raise InvalidInput(
                f"'{name[:100]}' is not an output; expected one of {list(OUTPUT_NAMES)}", f"outputs[{i}].name"
            )
        if name in names[:i]:  # each repeat would build another full copy of the answer
            raise InvalidInput(f"'{name}' is requested more than once", f"outputs[{i}].name")
    return tuple(names) or OUTPUT_NAMES


def check_datatype(datatype: str) -> None:
    if datatype not in ("UINT8", "FP32"):
        raise InvalidInput(f"'{datatype[:40]}'; expected UINT8 (or FP32 in [0, 1])", "inputs[0].datatype")


def tensor_images(
    datatype: str, count: int, data: bytes | Sequence[Any] | np.ndarray, shape: Sequence[int], field: str
) -> np.ndarray:
    """One v2 input's data → uint8 [N,28,28]. ``data`` is raw little-endian bytes, or the
    values as the request holds them (a protobuf repeated field, a JSON list)."""
    needed = count * IMAGE_PIXELS
    check_datatype(datatype)
    if isinstance(data, bytes):
        size = needed * (1 if datatype == "UINT8" else 4)
        if len(data) != size:
            raise InvalidInput(f"{len(data)} bytes; shape {list(shape)} of {datatype} needs {size}", field)
        if datatype == "UINT8":
            return np.frombuffer(data, dtype=np.uint8).reshape(count, *IMAGE_SHAPE)
        return float_to_pixels(np.frombuffer(data, dtype="<f4"), field).reshape(count, *IMAGE_SHAPE)
    if len(data) != needed:
        raise InvalidInput(f"{len(data)} values; shape {list(shape)} needs {needed}", field)
    if datatype == "UINT8":
        values = np.asarray(data, dtype=np.int64) if len(data) else np.zeros(0, np.int64)
        if values.size and values.max() > 255:
            raise InvalidInput("values above 255 for UINT8", field)
        if values.size and values.min() < 0:
            raise InvalidInput("values below 0 for UINT8", field)
        return values.astype(np.uint8).reshape(count, *IMAGE_SHAPE)
    return float_to_pixels(np.asarray(data, dtype=np.float32), field).reshape(count, *IMAGE_SHAPE)


# --- KServe v2 over gRPC ----------------------------------------------------------------


def v2_request(request: v2.ModelInferRequest, max_images: int) -> tuple[np.ndarray, bool, tuple[str, ...]]:
    """ModelInferRequest → (uint8 [N,28,28], answer raw?, output names to return)."""
    input_tensor([tensor.name for tensor in request.inputs])
    tensor = request.inputs[0]
    raw_contents = request.raw_input_contents
    use_raw = len(raw_contents) > 0
    if use_raw and len(raw_contents) != 1:
        raise InvalidInput(f"{len(raw_contents)} entries for 1 input", "raw_input_contents")
    if use_raw and tensor.HasField("contents"):
        raise InvalidInput("set together with raw_input_contents; use one of them", "inputs[0].contents")
    count = image_count(tensor.shape, "inputs[0].shape")
    check_count(count, max_images, "inputs[0].shape[0]")
    requested = requested_outputs([o.name for o in request.outputs])
    if use_raw:
        data, field = raw_contents[0], "raw_input_contents[0]"
    elif tensor.datatype == "FP32":
        data, field = tensor.contents.fp32_contents, "inputs[0].contents.fp32_contents"
    else:
        data, field = tensor.contents.uint_contents, "inputs[0].contents.uint_contents"
    return tensor_images(tensor.datatype, count, data, tensor.shape, field), use_raw, requested


MAX_TIMEOUT_US = 86_400_000_000  # a day: longer is surely a unit mistake


def timeout_parameter(parameters: Mapping[str, v2.InferParameter]) -> float | None:
    """Triton's per-request ``timeout`` parameter (int64 microseconds) in seconds, if given."""
    if "timeout" not in parameters:
        return None
    value = parameters["timeout"]
    if value.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
        raise InvalidInput("expected an integer number of microseconds", "parameters.timeout")
    micros = value.int64_param or value.uint64_param
    if not 0 <= micros <= MAX_TIMEOUT_US:
        raise InvalidInput(f"{micros} µs; expected 0 (none) to {MAX_TIMEOUT_US}", "parameters.timeout")
    return micros / 1e6 if micros else None


def v2_response(
    request_id: str,
    probabilities: np.ndarray,
    labels: np.ndarray,
    raw: bool,
    requested: tuple[str, ...],
    model_name: str,
    model_version: str,
) -> v2.ModelInferResponse:
    """Answer in the request's form: raw bytes for raw requests, typed contents otherwise."""
    response = v2.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
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


def metadata_response(
    name: str, versions: Sequence[int], parameters: dict[str, str]
) -> v2.ModelMetadataResponse:
    """A model's metadata, from the one contract (``common/contract.py``)."""
    contract = contract_dict()
    return v2.ModelMetadataResponse(
        name=name,
        versions=[str(v) for v in versions],
        platform="onnxruntime_onnx",
        inputs=[v2.ModelMetadataResponse.TensorMetadata(**t) for t in contract["inputs"]],
        outputs=[v2.ModelMetadataResponse.TensorMetadata(**t) for t in contract["outputs"]],
        parameters={k: v2.InferParameter(string_param=v) for k, v in parameters.items()},
    )


# --- KServe v2 over HTTP (JSON, and Triton's binary tensors) ----------------------------


def _object(value: object, field: str, what: str = "a JSON object") -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"expected {what}", field)
    return value


def _parameters(container: dict, field: str) -> dict:
    """``container["parameters"]``, a JSON object if given (``field`` names it)."""
    value = container.get("parameters")
    return {} if value is None else _object(value, field)


def json_request(
    body: bytes, header_length: str | None, max_images: int
) -> tuple[np.ndarray, dict, tuple[str, ...]]:
    """An HTTP infer body (JSON, or JSON then binary tensors) → (uint8 [N,28,28], the JSON
    header (for the outputs' binary_data choices), output names to return)."""
    length = len(body)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(f"'{header_length[:40]}' is not a byte count", HEADER_LENGTH) from None
        if not 0 < length <= len(body):
            raise InvalidInput(f"{length}; the body has {len(body)} bytes", HEADER_LENGTH)
    header = parse_json(body[:length])
    tensor, count, datatype, requested = json_header(header, max_images)
    shape = tensor["shape"]
    size = _parameters(tensor, "inputs[0].parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or length + size > len(body):
            raise InvalidInput(f"{size}; beyond the body", "inputs[0].parameters.binary_data_size")
        data: bytes | np.ndarray = body[length : length + size]
        field = "inputs[0] binary data"
    elif "data" in tensor:
        data, field = _json_numbers(tensor["data"], datatype, count, shape), "inputs[0].data"
    else:
        raise InvalidInput("no 'data' and no parameters.binary_data_size", "inputs[0]")
    return tensor_images(datatype, count, data, shape, field), header, requested


def parse_json(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not JSON ({str(exc)[:200]})", "request body") from None


def json_header(header: object, max_images: int) -> tuple[dict, int, str, tuple[str, ...]]:
    """A v2 JSON request's checks, all but its data: (the input tensor, its image count, its
    datatype, the output names to return)."""
    _object(header, "request body", "a JSON object with 'inputs'")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("expected a list of tensors", "inputs")
    if len(inputs) == 1:
        _object(inputs[0], "inputs[0]")
    input_tensor([str(t.get("name", "")) if isinstance(t, dict) else "" for t in inputs])
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and abs(d) < 2**62 for d in shape):
        raise InvalidInput("expected a list of integers", "inputs[0].shape")
    count = image_count(shape, "inputs[0].shape")
    check_count(count, max_images, "inputs[0].shape[0]")
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidInput("expected a list of objects with a 'name'", "outputs")
    _parameters(header, "parameters")
    for i, output in enumerate(outputs):
        _parameters(
            _object(output, f"outputs[{i}]", "a JSON object with a 'name'"), f"outputs[{i}].parameters"
        )
    requested = requested_outputs([str(o.get("name", "")) for o in outputs if isinstance(o, dict)])
    datatype = str(tensor.get("datatype", ""))
    check_datatype(datatype)
    return tensor, count, datatype, requested


def _json_numbers(data: object, datatype: str, count: int, shape: list[int]) -> np.ndarray:
    """A JSON ``data`` list (flat, or nested by image) as one flat list of numbers; UINT8 takes
    integers only (1.5 is refused, not cut). Lengths are checked before anything is built."""
    field = "inputs[0].data"
    expected = "integers" if datatype == "UINT8" else "numbers"
    if not isinstance(data, list):
        raise InvalidInput(f"expected a (nested) list of {expected}", field)
    if len(data) == count and count and isinstance(data[0], list):  # nested: [N][28][28] or [N][784]
        try:
            array = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            raise InvalidInput(f"a ragged list; expected {count} images of 784 {expected}", field) from None
        flat = array.reshape(-1)
        if array.size != count * IMAGE_PIXELS:
            raise InvalidInput(f"{array.size} values; shape {shape} needs {count * IMAGE_PIXELS}", field)
    else:
        if len(data) != count * IMAGE_PIXELS:
            raise InvalidInput(f"{len(data)} values; shape {shape} needs {count * IMAGE_PIXELS}", field)
        try:
            flat = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            raise InvalidInput(f"expected a (nested) list of {expected}", field) from None
    kinds = "iu" if datatype == "UINT8" else "iuf"
    if flat.size and (flat.dtype.kind not in kinds or flat.ndim != 1):
        raise InvalidInput(f"expected a (nested) list of {expected}", field)
    return flat


def json_response(
    header: dict,
    probabilities: np.ndarray,
    labels: np.ndarray,
    requested: tuple[str, ...],
    name: str,
    version: str,
) -> tuple[bytes, int | None]:
    """Outputs as JSON data, or as binary after the JSON where the caller asked (per output,
    or ``binary_data_output`` for all), as Triton's extension defines. Returns the body and,
    with binary outputs, the JSON header's length."""
    binary_default = bool(_parameters(header, "parameters").get("binary_data_output", False))
    choices = {  # checked by json_request
        o.get("name"): bool(_parameters(o, "outputs[].parameters").get("binary_data", binary_default))
        for o in header.get("outputs") or []
    }
    outputs, blobs = [], []
    count = len(labels)
    for output_name in requested:
        if output_name == OUTPUT_PROBABILITIES.name:
            array, datatype, shape = probabilities.astype("<f4", copy=False), "FP32", [count, NUM_CLASSES]
        else:
            array, datatype, shape = labels.astype("<i8", copy=False), "INT64", [count]
        entry: dict[str, Any] = {"name": output_name, "datatype": datatype, "shape": shape}
        if choices.get(output_name, binary_default):
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = np.ascontiguousarray(array.reshape(-1))
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outputs}
    if header.get("id"):
        document["id"] = str(header["id"])[:256]
    text = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)


def to_json(value: object) -> bytes:
    """JSON bytes (numpy arrays serialised directly)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


# --- the own API (mnist.v1) -------------------------------------------------------------


def image_item(image: pb.Image, field: str) -> Item:
    """One Image message → pixels, or encoded bytes for the data plane to decode."""
    kind = image.WhichOneof("data")
    if kind == "raw":
        if len(image.raw) != IMAGE_PIXELS:
            raise InvalidInput(
                f"{len(image.raw)} bytes; expected {IMAGE_PIXELS} "
                f"({IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} uint8, row-major)",
                f"{field}.raw",
            )
        return np.frombuffer(image.raw, dtype=np.uint8).reshape(IMAGE_SHAPE)
    if kind == "encoded":
        return image.encoded
    if kind == "pixels":
        if len(image.pixels.values) != IMAGE_PIXELS:
            raise InvalidInput(
                f"{len(image.pixels.values)} values; expected {IMAGE_PIXELS}", f"{field}.pixels.values"
            )
        values = np.asarray(image.pixels.values, dtype=np.float32)
        return float_to_pixels(values, f"{field}.pixels.values").reshape(IMAGE_SHAPE)
    raise InvalidInput("no data; set one of raw, encoded or pixels", field)


def batch_items(request: pb.ClassifyBatchRequest, max_images: int) -> np.ndarray | list[Item]:
    """A batch as one uint8 [N,28,28] array (packed raw), or as items decoded one by one."""
    has_raw = request.HasField("raw")
    if has_raw and len(request.images):
        raise InvalidInput("both set; send either a packed raw batch or a list of images", "raw, images")
    if has_raw:
        data, count = request.raw.data, request.raw.count
        if count == 0 and len(data) % IMAGE_PIXELS == 0:
            count = len(data) // IMAGE_PIXELS
        check_count(count, max_images, "raw")
        if len(data) != count * IMAGE_PIXELS:
            raise InvalidInput(
                f"{len(data)} bytes; expected count x {IMAGE_PIXELS} = {count * IMAGE_PIXELS}", "raw.data"
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


def batch_response(
    labels: np.ndarray,
    probabilities: np.ndarray,
    confidences: np.ndarray,
    errors: dict[int, tuple[str, str]],
    with_probabilities: bool,
    model_name: str,
    model_version: str,
) -> pb.ClassifyBatchResponse:
    """``errors``: index → (status name, message) of the items that failed."""
    response = pb.ClassifyBatchResponse(
        labels=labels.astype(np.uint8).tobytes(),
        probabilities=probabilities.astype("<f4").tobytes() if with_probabilities else b"",
        confidences=confidences.astype("<f4").tobytes(),
        count=len(labels),
        model_name=model_name,
        model_version=model_version,
    )
    for index in sorted(errors):
        code, message = errors[index]
        response.errors.add(index=index, code=code, message=message)
    return response
