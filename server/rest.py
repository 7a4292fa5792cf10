"""REST's way into the data plane: KServe v2 / Open Inference Protocol over HTTP, the own
API's single-image call for the drawing page, and the page itself.

An ASGI app (Starlette) served by uvicorn in the gRPC server's own process and event loop.
Every project route runs inside the data plane's call, as gRPC does (token, admission,
request id, metrics, logs, trace), and converts with the codec, so both transports accept
and refuse exactly the same tensors. A ``CallFailed`` becomes ``{"error": "..."}`` with the
HTTP status of the data plane's table.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mnist_serving.common import __version__
from mnist_serving.common.contract import IMAGE_SHAPE, metadata_document
from mnist_serving.server import big_json, codec, tracing, triton_documents
from mnist_serving.server.calls import REQUEST_ID, CallFailed, CallScope, Status
from mnist_serving.server.dataplane import DataPlane
from mnist_serving.server.errors import BodyTooLarge, CallerGone, InvalidInput, Unimplemented
from mnist_serving.server.triton_documents import EXTENSIONS

API_V2 = "inference.rest"
API_OWN = "mnist.v1.rest"
# The page loads nothing from elsewhere, and says so to the browser.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript")}
PAGE_FILES["/style.css"] = ("style.css", "text/css")


def _json(document: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(codec.to_json(document), status, headers, media_type="application/json")


async def _failed(request: Request, failed: Exception) -> Response:
    """A call that did not succeed, in REST's words."""
    assert isinstance(failed, CallFailed)
    headers = {REQUEST_ID: failed.request_id} if failed.request_id else None
    return _json({"error": failed.message}, failed.http, headers)


class RestFrontEnd:
    """The HTTP routes; every project route runs inside ``_call`` (the data plane's call)."""

    def __init__(self, dataplane: DataPlane, max_request_images: int, max_body_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_images = max_request_images
        self.max_body_bytes = max_body_bytes
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", self.unload, methods=["POST"]),
            Route("/v2/models/stats", self.statistics),
            Route("/v2/models/{name}/stats", self.statistics),
            Route("/v2/models/{name}/versions/{version}/stats", self.statistics),
            Route("/v2/models/{name}/config", self.model_config),
            Route("/v2/models/{name}/versions/{version}/config", self.model_config),
            Route("/v2/systemsharedmemory{rest:path}", self.unimplemented, methods=["GET", "POST"]),
            Route("/v2/cudasharedmemory{rest:path}", self.unimplemented, methods=["GET", "POST"]),
            Route("/v2/trace/setting", self.unimplemented, methods=["GET", "POST"]),
            Route("/v2/models/{name}/trace/setting", self.unimplemented, methods=["GET", "POST"]),
            Route("/v2/logging", self.unimplemented, methods=["GET", "POST"]),
            Route("/v2/models/{name}", self.model_metadata),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata),
            Route("/v2/models/{name}/ready", self.model_ready),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready),
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.infer, methods=["POST"]),
            Route("/v1/classify", self.classify, methods=["POST"]),
            *(Route(path, self.page) for path in PAGE_FILES),
        ]
        self.app = Starlette(routes=routes, exception_handlers={CallFailed: _failed})
        self._page = {
            path: (resources.files("mnist_serving.server").joinpath("page", name).read_bytes(), kind)
            for path, (name, kind) in PAGE_FILES.items()
        }

    def _call(self, request: Request, api: str, method: str) -> CallScope:
        headers = request.headers
        carrier = headers if tracing.enabled() else None  # traceparent, tracestate
        return self.dataplane.call(
            api, method, headers.get("authorization"), headers.get(REQUEST_ID), None, carrier
        )

    async def _body(self, request: Request) -> bytearray:
        """The body, refused past the limit before it is all read; gathered in one buffer (a
        join of many parts at the end would hold the event loop for milliseconds)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BodyTooLarge(f"{declared} bytes; at most {self.max_body_bytes}", "request body")
        body = bytearray()
        try:
            async for part in request.stream():
                if len(body) + len(part) > self.max_body_bytes:
                    raise BodyTooLarge(f"over {self.max_body_bytes} bytes", "request body")
                body += part
        except ClientDisconnect:  # counted CANCELLED, as over gRPC: the caller's doing, not ours
            raise CallerGone("the client disconnected before its body was read") from None
        return body

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
        async with self._call(request, API_V2, "ServerMetadata") as call:
            extensions = ["binary_tensor_data", *EXTENSIONS]
            document = {"name": "mnist-serving", "version": __version__, "extensions": extensions}
        return _json(document, headers={REQUEST_ID: call.request_id})

    async def model_metadata(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")
        async with self._call(request, API_V2, "ModelMetadata") as call:
            document = metadata_document(self.dataplane.metadata(name, version))
        return _json(document, headers={REQUEST_ID: call.request_id})

    async def model_ready(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")
        async with self._call(request, API_V2, "ModelReady") as call:
            self.dataplane.model(name, version)  # unknown: 404 from the error table
            ready = self.dataplane.ready()
        status = 200 if ready else Status.UNAVAILABLE.http
        return _json({"name": name, "ready": ready}, status, {REQUEST_ID: call.request_id})

    async def infer(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")
        async with self._call(request, API_V2, "ModelInfer") as call:
            body = await self._body(request)
            header_length = request.headers.get(codec.HEADER_LENGTH)
            images, header, requested = await big_json.json_request(
                body, header_length, self.max_request_images
            )
            result = await self.dataplane.classify(name, version, images)
            model = result.model
            content, json_length = codec.json_response(
                header, result.probabilities, result.labels, requested, model.name, model.version_str
            )
        headers = {REQUEST_ID: call.request_id}
        if json_length is None:
            return Response(content, headers=headers, media_type="application/json")
        headers[codec.HEADER_LENGTH] = str(json_length)
        return Response(content, headers=headers, media_type="application/octet-stream")

    # --- Triton's extensions ------------------------------------------------------------------

    async def model_config(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")
        async with self._call(request, API_V2, "ModelConfig") as call:
            document = triton_documents.to_json(self.dataplane.model_config(name, version).config)
        return _json(document, headers={REQUEST_ID: call.request_id})

    async def statistics(self, request: Request) -> Response:
        name, version = request.path_params.get("name", ""), request.path_params.get("version", "")
        async with self._call(request, API_V2, "ModelStatistics") as call:
            document = triton_documents.to_json(self.dataplane.statistics(name, version))
        return _json(document, headers={REQUEST_ID: call.request_id})

    async def repository_index(self, request: Request) -> Response:
        async with self._call(request, API_V2, "RepositoryIndex") as call:
            options = await self._json_body(request)
            ready = options.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInput("expected true or false", "ready")
            index = self.dataplane.repository_index(ready)
            document = [triton_documents.to_json(model) for model in index.models]
        return _json(document, headers={REQUEST_ID: call.request_id})

    async def load(self, request: Request) -> Response:
        name = request.path_params["name"]
        async with self._call(request, API_V2, "RepositoryModelLoad") as call:
            options = await self._json_body(request)
            parameters = options.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise InvalidInput("expected an object", "parameters")
            await self.dataplane.load(name, parameters, request.headers.get("authorization"))
        return Response(b"", headers={REQUEST_ID: call.request_id})

    async def unload(self, request: Request) -> Response:
        name = request.path_params["name"]
        async with self._call(request, API_V2, "RepositoryModelUnload") as call:
            await self._json_body(request)  # Triton's unload_dependents changes nothing here
            await self.dataplane.unload(name, request.headers.get("authorization"))
        return Response(b"", headers={REQUEST_ID: call.request_id})

    async def unimplemented(self, request: Request) -> Response:
        async with self._call(request, API_V2, "Unimplemented"):
            path = request.url.path
            if "sharedmemory" in path:
                raise Unimplemented("shared memory is not offered: send tensors as binary tensor data")
            raise Unimplemented(f"{path}: not offered; see docs/operations.md for what this server has")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _json_body(self, request: Request) -> dict[str, Any]:
        """A small JSON object body (Triton's options), or {} when there is none."""
        body = await self._body(request)
        if not body.strip():
            return {}
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"not JSON ({exc})", "request body") from None
        if not isinstance(document, dict):
            raise InvalidInput("expected a JSON object", "request body")
        return document

    # --- the own API's single image (what the page sends) ----------------------------------------

    async def classify(self, request: Request) -> Response:
        """One encoded image in the body → label, confidence, the ten probabilities, the model
        version and (``?preprocessed=1``) the 28×28 pixels the model saw."""
        query = request.query_params
        async with self._call(request, API_OWN, "Classify") as call:
            body = await self._body(request)
            if not body:
                raise InvalidInput("empty; expected one encoded image (PNG, JPEG, ...)", "request body")
            model, version = query.get("model", ""), query.get("version", "")
            result = await self.dataplane.classify_items(
                model, version, [bytes(body)], field=lambda _: "body"
            )
            if result.errors:
                raise result.errors[0]
        label = int(result.labels[0])
        document: dict[str, Any] = {
            "label": label,
            "confidence": float(result.probabilities[0][label]),
            "probabilities": result.probabilities[0],
            "model_name": result.model.name,
            "model_version": result.model.version_str,
        }
        if query.get("preprocessed") in ("1", "true"):
            document["preprocessed"] = result.images[0].reshape(IMAGE_SHAPE)
        return _json(document, headers={REQUEST_ID: call.request_id})
