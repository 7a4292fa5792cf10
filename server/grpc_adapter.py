"""gRPC's way into the data plane: one interceptor around every project RPC.

It asks the data plane for the token decision, opens and admits the call, runs the
servicer (which only converts messages), and turns whatever the call ended with into a
gRPC status through the data plane's one error table. Health stays open and outside
admission, so probes answer while the server loads or drains.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn

import grpc

from mnist_serving.server import tracing
from mnist_serving.server.dataplane import REQUEST_ID, Call, DataPlane, Status, header

OPEN_SERVICES = ("grpc.health.v1.Health",)
TRACE_HEADERS = ("traceparent", "tracestate")
# The project's own services, and the API label their metrics carry.
APIS = {"mnist.v1.Classifier": "mnist.v1", "inference.GRPCInferenceService": "inference"}


def grpc_code(status: Status) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, status.name)


class DataPlaneInterceptor(grpc.aio.ServerInterceptor):
    """Auth, admission, request ids, status mapping and metrics for every project RPC."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        # Wrapped handlers, one per method: built once, not on every call (the hot path).
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service, _, method = (details.method or "").lstrip("/").partition("/")
        if handler is None or service in OPEN_SERVICES:
            return handler
        api = APIS.get(service, service)
        problem = self.dataplane.auth_problem(header(details.invocation_metadata, "authorization"))
        if problem is not None:
            self.dataplane.refused(api, method, problem)
            return _denied(handler, problem)
        if service not in APIS:  # reflection: authenticated, not admitted or counted
            return handler
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped[details.method] = self._wrap(api, method, handler)
        return wrapped

    def _wrap(self, api: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(api, method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(api, method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _fail(self, call: Call, exc: BaseException, context: grpc.aio.ServicerContext) -> NoReturn:
        """End the call with the status the data plane's table gives ``exc``, and answer it."""
        outcome = self.dataplane.end(call, exc)
        if outcome.status is Status.CANCELLED or isinstance(exc, grpc.aio.AbortError):
            raise exc  # the caller is gone, or the call was already answered
        await context.abort(grpc_code(outcome.status), outcome.message)

    def _open(self, api: str, method: str, context: grpc.aio.ServicerContext) -> Call:
        metadata = context.invocation_metadata()
        carrier = None
        if tracing.enabled():  # the caller's trace context (W3C traceparent, tracestate)
            carrier = {k: v for k, v in metadata or () if k in TRACE_HEADERS and isinstance(v, str)}
        call = self.dataplane.begin(
            api, method, header(metadata, REQUEST_ID), context.time_remaining(), carrier
        )
        context.set_trailing_metadata(((REQUEST_ID, call.request_id),))
        return call

    def _unary(self, api: str, method: str, behavior: Callable) -> Callable:
        dataplane = self.dataplane

        async def wrapped(request: object, context: grpc.aio.ServicerContext) -> object:
            call = self._open(api, method, context)
            try:
                dataplane.admit(call)
                response = await behavior(request, context)
            except BaseException as exc:
                await self._fail(call, exc, context)
            dataplane.end(call, None)
            return response

        return wrapped

    def _stream(self, api: str, method: str, behavior: Callable) -> Callable:
        dataplane = self.dataplane

        async def wrapped(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> AsyncIterator:
            call = self._open(api, method, context)
            try:
                dataplane.admit(call)
                async for response in behavior(requests, context):
                    yield response
            except BaseException as exc:
                await self._fail(call, exc, context)
            dataplane.end(call, None)

        return wrapped


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers UNAUTHENTICATED without parsing the request."""

    async def unary(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    # No request_deserializer: the refused call's bytes are never parsed into a message.
    kwargs = {"response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
