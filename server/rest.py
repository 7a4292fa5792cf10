"""REST's way into the data plane: KServe v2 / Open Inference Protocol over HTTP, the own
API's single-image call for the drawing page, and the page itself.

An ASGI app (Starlette) served by uvicorn in the gRPC server's own process and event loop.
A request goes through the same token decision, admission, request ids, metrics, batcher
and error table as over gRPC. A v2 infer request is turned into the v2 protobuf request
and checked by the gRPC servicer's own ``decode_infer_request``, so both transports accept
and refuse exactly the same tensors; only field names in messages are REST's own. Errors
are ``{"error": "..."}`` with the HTTP status of the data plane's table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mnist_serving.common import __version__
from mnist_serving.common.contract import IMAGE_SHAPE, NUM_CLASSES, OUTPUT_PROBABILITIES
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2 as v2
from mnist_serving.server import tracing
from mnist_serving.server.dataplane import REQUEST_ID, DataPlane, Status
from mnist_serving.server.errors import InvalidInput, ServingError
from mnist_serving.server.v2_servicer import decode_infer_request, model_metadata

HEADER_LENGTH = "inference-header-content-length"  # Triton's binary-data extension
API_V2 = "inference.rest"
API_OWN = "mnist.v1.rest"
# The page loads nothing from elsewhere, and says so to the browser.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript")}
PAGE_FILES["/style.css"] = ("style.css", "text/css")
# gRPC field names in the shared checks → the JSON request's own.
_FIELD_NAMES = (
    (re.compile(r"inputs\[0\]\.contents\.\w+_contents"), "inputs[0].data"),
    (re.compile(r"raw_input_contents\[0\]"), "inputs[0] binary data"),
)


def _error(status: Status, message: str, request_id: str | None = None) -> JSONResponse:
    headers = {REQUEST_ID: request_id} if request_id else None
    return JSONResponse({"error": message}, status_code=status.http, headers=headers)


def _rest_message(exc: BaseException) -> str:
    message = str(exc)
    for pattern, name in _FIELD_NAMES:
        message = pattern.sub(name, message)
    return message


def _tensor_values(data: Any, field: str, datatype: str) -> np.ndarray:
    """A JSON ``data`` list as numbers; UINT8 takes integers only (1.5 is refused, not cut)."""
    try:
        values = np.asarray(data).ravel()
    except (TypeError, ValueError, OverflowError):
        values = np.asarray([None])
    kinds = "iu" if datatype == "UINT8" else "iuf"
    if values.size and values.dtype.kind not in kinds:
        expected = "integers" if datatype == "UINT8" else "numbers"
        raise InvalidInput(f"{field}: expected a (nested) list of {expected}")
    return values


def infer_request(body: bytes, header_length: str | None) -> tuple[v2.ModelInferRequest, dict]:
    """An HTTP infer body (JSON, or JSON then binary tensors) → the v2 protobuf request, and
    the JSON header (for the outputs' binary_data choices)."""
    length = len(body)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH}: '{header_length[:40]}' is not a byte count") from None
        if not 0 < length <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH}: {length}; the body has {len(body)} bytes")
    try:
        header = json.loads(body[:length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"request body: not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InvalidInput("request body: expected a JSON object with 'inputs'")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("inputs: expected a list of tensors")
    request = v2.ModelInferRequest(id=str(header.get("id", ""))[:256])
    offset = length
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise InvalidInput(f"inputs[{i}]: expected a JSON object")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and abs(d) < 2**62 for d in shape):
            raise InvalidInput(f"inputs[{i}].shape: expected a list of integers")
        message = request.inputs.add(
            name=str(tensor.get("name", "")), datatype=str(tensor.get("datatype", ""))
        )
        message.shape.extend(shape)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InvalidInput(f"inputs[{i}].parameters.binary_data_size: {size}; beyond the body")
            request.raw_input_contents.append(body[offset : offset + size])
            offset += size
        elif "data" in tensor and i == 0:
            # Only the first input can be ours; the shared check names any other.
            datatype = message.datatype
            values = _tensor_values(tensor["data"], f"inputs[{i}].data", datatype)
            if datatype == "UINT8":
                if values.size and (values.min() < 0 or values.max() > 255):
                    raise InvalidInput(f"inputs[{i}].data: values outside 0..255 for UINT8")
                message.contents.uint_contents.extend(values.tolist())
            elif datatype == "FP32":
                message.contents.fp32_contents.extend(values.tolist())
        elif i == 0:
            raise InvalidInput(f"inputs[{i}]: no 'data' and no parameters.binary_data_size")
    for i, output in enumerate(header.get("outputs") or []):
        if not isinstance(output, dict):
            raise InvalidInput(f"outputs[{i}]: expected a JSON object with a 'name'")
        request.outputs.add(name=str(output.get("name", "")))
    return request, header


def infer_response(
    header: dict,
    probabilities: np.ndarray,
    labels: np.ndarray,
    requested: tuple[str, ...],
    name: str,
    version: str,
) -> Response:
    """Outputs as JSON data, or as binary after the JSON where the caller asked (per output,
    or ``binary_data_output`` for all), as Triton's extension defines."""
    binary_default = bool((header.get("parameters") or {}).get("binary_data_output", False))
    choices = {
        o.get("name"): bool((o.get("parameters") or {}).get("binary_data", binary_default))
        for o in header.get("outputs") or []
        if isinstance(o, dict)
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
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    document = {"model_name": name, "model_version": version, "outputs": outputs}
    if header.get("id"):
        document["id"] = str(header["id"])
    text = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(
        b"".join([text, *blobs]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )


class RestFrontEnd:
    """The HTTP routes; every project call passes through ``_call`` (the data plane's steps)."""

    def __init__(self, dataplane: DataPlane, max_request_images: int, max_body_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_images = max_request_images
        self.max_body_bytes = max_body_bytes
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/models/{name}", self.model_metadata),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata),
            Route("/v2/models/{name}/ready", self.model_ready),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready),
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.infer, methods=["POST"]),
            Route("/v1/classify", self.classify, methods=["POST"]),
            *(Route(path, self.page) for path in PAGE_FILES),
        ]
        self.app = Starlette(routes=routes)
        self._page = {
            path: (resources.files("mnist_serving.server").joinpath("page", name).read_bytes(), kind)
            for path, (name, kind) in PAGE_FILES.items()
        }

    # --- the data plane's steps, REST's way --------------------------------------------------

    async def _call(
        self, request: Request, api: str, method: str, work: Callable[[], Awaitable[Response]]
    ) -> Response:
        dataplane = self.dataplane
        problem = dataplane.auth_problem(request.headers.get("authorization"))
        if problem is not None:
            dataplane.refused(api, method, problem)
            return _error(Status.UNAUTHENTICATED, problem)
        carrier = request.headers if tracing.enabled() else None  # traceparent, tracestate
        call = dataplane.begin(api, method, request.headers.get(REQUEST_ID), None, carrier)
        try:
            dataplane.admit(call)
            response = await work()
        except BaseException as exc:
            outcome = dataplane.end(call, exc)
            if outcome.status is Status.CANCELLED:
                raise
            return _error(
                outcome.status,
                _rest_message(exc) if isinstance(exc, ServingError) else outcome.message,
                call.request_id,
            )
        dataplane.end(call, None)
        response.headers[REQUEST_ID] = call.request_id
        return response

    async def _body(self, request: Request) -> bytes:
        """The body, refused past the message limit before it is all read."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise InvalidInput(f"request body: {declared} bytes; at most {self.max_body_bytes}")
        parts, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > self.max_body_bytes:
                raise InvalidInput(f"request body: over {self.max_body_bytes} bytes")
            parts.append(part)
        return b"".join(parts)

    # --- open: health, the page ---------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.dataplane.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else Status.UNAVAILABLE.http)

    async def page(self, request: Request) -> Response:
        content, kind = self._page[request.url.path]
        headers = {"content-security-policy": PAGE_POLICY, "x-content-type-options": "nosniff"}
        return Response(content, media_type=kind, headers=headers)

    # --- v2 -------------------------------------------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        async def work() -> Response:
            return JSONResponse(
                {"name": "mnist-serving", "version": __version__, "extensions": ["binary_tensor_data"]}
            )

        return await self._call(request, API_V2, "ServerMetadata", work)

    async def model_metadata(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")

        async def work() -> Response:
            metadata = model_metadata(self.dataplane, name, version)
            document = {
                "name": metadata.name,
                "versions": list(metadata.versions),
                "platform": metadata.platform,
                "inputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.inputs
                ],
                "outputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.outputs
                ],
                "parameters": {k: v.string_param for k, v in metadata.parameters.items()},
            }
            return JSONResponse(document)

        return await self._call(request, API_V2, "ModelMetadata", work)

    async def model_ready(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")

        async def work() -> Response:
            self.dataplane.model(name, version)  # unknown: 404 from the error table
            ready = self.dataplane.ready()
            status = 200 if ready else Status.UNAVAILABLE.http
            return JSONResponse({"name": name, "ready": ready}, status_code=status)

        return await self._call(request, API_V2, "ModelReady", work)

    async def infer(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")

        async def work() -> Response:
            body = await self._body(request)
            message, header = infer_request(body, request.headers.get(HEADER_LENGTH))
            images, _, requested = decode_infer_request(message, self.max_request_images)
            result = await self.dataplane.classify(name, version, images)
            return infer_response(
                header,
                result.probabilities,
                result.labels,
                requested,
                result.model.name,
                result.model.version_str,
            )

        return await self._call(request, API_V2, "ModelInfer", work)

    # --- the own API's single image (what the page sends) ----------------------------------------

    async def classify(self, request: Request) -> Response:
        """One encoded image in the body → label, confidence, the ten probabilities, the model
        version and (``?preprocessed=1``) the 28×28 pixels the model saw."""

        async def work() -> Response:
            body = await self._body(request)
            if not body:
                raise InvalidInput("request body: empty; expected one encoded image (PNG, JPEG, ...)")
            model = request.query_params.get("model", "")
            version = request.query_params.get("version", "")
            result = await self.dataplane.classify_items(model, version, [body], field=lambda _: "body")
            if result.errors:
                raise result.errors[0]
            label = int(result.labels[0])
            document: dict[str, Any] = {
                "label": label,
                "confidence": float(result.probabilities[0][label]),
                "probabilities": result.probabilities[0].tolist(),
                "model_name": result.model.name,
                "model_version": result.model.version_str,
            }
            if request.query_params.get("preprocessed") in ("1", "true"):
                document["preprocessed"] = result.images[0].reshape(IMAGE_SHAPE).tolist()
            return JSONResponse(document)

        return await self._call(request, API_OWN, "Classify", work)
