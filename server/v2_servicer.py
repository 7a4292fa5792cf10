"""inference.GRPCInferenceService (KServe v2 / Open Inference Protocol): messages ⇄ arrays.

Every wire-format rule of v2 lives here, checked before any pixel is converted; every
refusal names the field and what was expected. ModelInfer is all-or-nothing, as the
protocol defines. Admission, errors, metrics and request ids are the data plane's.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from mnist_serving.common import __version__
from mnist_serving.common.contract import (
    IMAGE_HEIGHT,
    IMAGE_PIXELS,
    IMAGE_WIDTH,
    INPUT,
    NUM_CLASSES,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    contract_dict,
)
from mnist_serving.common.preprocess import PREPROCESSING_VERSION
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mnist_serving.server.dataplane import DataPlane, check_count, float_to_pixels
from mnist_serving.server.errors import InvalidInput, ServingError

PLATFORM = "onnxruntime_onnx"
OUTPUT_NAMES = (OUTPUT_PROBABILITIES.name, OUTPUT_LABEL.name)


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


def _typed_contents(
    tensor: v2.ModelInferRequest.InferInputTensor, name: str, dtype: type, count: int
) -> np.ndarray:
    """Typed contents as an array; their length is checked before any array is made."""
    values = getattr(tensor.contents, name)
    if len(values) != count * IMAGE_PIXELS:
        raise InvalidInput(
            f"inputs[0].contents.{name}: {len(values)} values; "
            f"shape {list(tensor.shape)} needs {count * IMAGE_PIXELS}"
        )
    return np.asarray(values, dtype=dtype)


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
    check_count(count, max_images, "inputs[0].shape[0]")
    requested = tuple(o.name for o in request.outputs) or OUTPUT_NAMES
    for i, name in enumerate(requested):
        if name not in OUTPUT_NAMES:
            raise InvalidInput(
                f"outputs[{i}].name: '{name[:100]}' is not an output; expected one of {list(OUTPUT_NAMES)}"
            )
        if name in requested[:i]:  # each repeat would build another full copy of the answer
            raise InvalidInput(f"outputs[{i}].name: '{name}' is requested more than once")
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
            values = _typed_contents(tensor, "uint_contents", np.uint32, count)
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
            values = _typed_contents(tensor, "fp32_contents", np.float32, count)
        field = "raw_input_contents[0]" if use_raw else "inputs[0].contents.fp32_contents"
        images = float_to_pixels(values, field)
    else:
        raise InvalidInput(f"inputs[0].datatype: '{datatype}'; expected UINT8 (or FP32 in [0, 1])")
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


def model_metadata(dataplane: DataPlane, name: str, version: str) -> v2.ModelMetadataResponse:
    """A model's metadata, as both transports answer it."""
    model = dataplane.model(name, version)
    contract = contract_dict()
    return v2.ModelMetadataResponse(
        name=model.name,
        versions=[str(v) for v in dataplane.store.versions(model.name)],
        platform=PLATFORM,
        inputs=[v2.ModelMetadataResponse.TensorMetadata(**t) for t in contract["inputs"]],
        outputs=[v2.ModelMetadataResponse.TensorMetadata(**t) for t in contract["outputs"]],
        parameters={"preprocessing_version": v2.InferParameter(string_param=PREPROCESSING_VERSION)},
    )


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, max_request_images: int) -> None:
        self.dataplane = dataplane
        self.max_request_images = max_request_images

    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelReadyResponse:
        try:
            self.dataplane.model(request.name, request.version)
        except ServingError:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=self.dataplane.ready())

    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="mnist-serving", version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelMetadataResponse:
        return model_metadata(self.dataplane, request.name, request.version)

    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelInferResponse:
        images, raw, requested = decode_infer_request(request, self.max_request_images)
        result = await self.dataplane.classify(request.model_name, request.model_version, images)
        return encode_infer_response(
            request,
            result.probabilities,
            result.labels,
            raw,
            requested,
            result.model.name,
            result.model.version_str,
        )
