"""gRPC's way into the data plane: one interceptor runs every project RPC inside the data
plane's call (``async with dataplane.call(...)``) and answers a ``CallFailed`` with its
gRPC status; the services reach the server through their generic handlers only
(``GenericHandlersOnly``). Health stays open and outside admission, so probes answer while
the server loads or drains.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
from google.protobuf.message import DecodeError

from mnist_serving.server import tracing
from mnist_serving.server.calls import REQUEST_ID, CallFailed, CallScope, Status, header
from mnist_serving.server.dataplane import DataPlane
from mnist_serving.server.errors import InvalidInput

OPEN_SERVICES = ("grpc.health.v1.Health",)
TRACE_HEADERS = ("traceparent", "tracestate")
# The project's own services, and the API label their metrics carry.
APIS = {"mnist.v1.Classifier": "mnist.v1", "inference.GRPCInferenceService": "inference"}
# Streams whose every message is a call of its own (the servicer opens it): the token is
# checked when the stream opens, and a message that cannot be parsed is that message's error.
PER_MESSAGE = {("inference", "ModelStreamInfer")}  # (API label, method)


class GenericHandlersOnly:
    """The server as the generated ``add_*_to_server`` functions see it: every method is served
    through its service's generic handler, none as a gRPC "registered method".

    grpc.aio keeps one pending task per registered method and waits on all of them each time
    it accepts a call, so every registered method costs every call: with Triton's whole service
    (26 methods in all) a ModelInfer took 11% more instructions than with none (callgrind,
    400 calls; ``docs/benchmarks.md``). The generated functions add a generic handler for the same
    methods, so dropping the registration loses nothing.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Not passed on: the generic handler added beside them serves these methods."""


def grpc_code(status: Status) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, status.name)


class DataPlaneInterceptor(grpc.aio.ServerInterceptor):
    """Every project RPC runs inside the data plane's call (token, admission, request id,
    metrics, logs, trace, status). Requests are parsed inside it, after the token: a refused
    call's bytes are never parsed."""

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
        if service not in APIS:  # reflection: authenticated, not admitted or counted
            problem = self.dataplane.auth_problem(header(details.invocation_metadata, "authorization"))
            if problem is not None:
                self.dataplane.refused(service, method, problem)
                return _denied(handler, problem)
            return handler
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped[details.method] = self._wrap(APIS[service], method, handler)
        return wrapped

    def _wrap(self, api: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # No request_deserializer: the bytes are parsed inside the call, once the token holds.
        serializer = handler.response_serializer
        if (api, method) in PER_MESSAGE:
            behavior = self._per_message(api, method, handler.stream_stream, handler.request_deserializer)
            return grpc.stream_stream_rpc_method_handler(behavior, response_serializer=serializer)
        if handler.unary_unary:
            behavior = self._unary(api, method, handler.unary_unary, handler.request_deserializer)
            return grpc.unary_unary_rpc_method_handler(behavior, response_serializer=serializer)
        if handler.stream_stream:
            behavior = self._stream(api, method, handler.stream_stream, handler.request_deserializer)
            return grpc.stream_stream_rpc_method_handler(behavior, response_serializer=serializer)
        return handler

    def _call(self, api: str, method: str, context: grpc.aio.ServicerContext) -> CallScope:
        metadata = context.invocation_metadata()
        carrier = None
        if tracing.enabled():  # the caller's trace context (W3C traceparent, tracestate)
            carrier = {k: v for k, v in metadata or () if k in TRACE_HEADERS and isinstance(v, str)}
        return self.dataplane.call(
            api,
            method,
            header(metadata, "authorization"),
            header(metadata, REQUEST_ID),
            context.time_remaining(),
            carrier,
        )

    def _unary(self, api: str, method: str, behavior: Callable, parse: Callable) -> Callable:
        async def wrapped(data: bytes, context: grpc.aio.ServicerContext) -> object:
            try:
                async with self._call(api, method, context) as call:
                    context.set_trailing_metadata(((REQUEST_ID, call.request_id),))
                    return await behavior(_parsed(parse, data), context)
            except CallFailed as failed:
                await context.abort(grpc_code(failed.status), failed.message)

        return wrapped

    def _stream(self, api: str, method: str, behavior: Callable, parse: Callable) -> Callable:
        async def wrapped(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator:
            try:
                async with self._call(api, method, context) as call:
                    context.set_trailing_metadata(((REQUEST_ID, call.request_id),))
                    async for response in behavior(_parsed_stream(parse, messages), context):
                        yield response
            except CallFailed as failed:
                await context.abort(grpc_code(failed.status), failed.message)

        return wrapped

    def _per_message(self, api: str, method: str, behavior: Callable, parse: Callable) -> Callable:
        async def wrapped(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator:
            problem = self.dataplane.auth_problem(header(context.invocation_metadata(), "authorization"))
            if problem is not None:
                self.dataplane.refused(api, method, problem)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
            async for response in behavior(_parsed_or_error(parse, messages), context):
                yield response

        return wrapped


async def _parsed_or_error(parse: Callable[[bytes], object], messages: AsyncIterator[bytes]) -> AsyncIterator:
    """Each message parsed, or the InvalidInput that says why it could not be."""
    async for data in messages:
        try:
            yield _parsed(parse, data)
        except InvalidInput as exc:
            yield exc


def _parsed(parse: Callable[[bytes], object], data: bytes) -> object:
    try:
        return parse(data)
    except DecodeError:
        raise InvalidInput("not a valid protobuf message for this method", "request") from None


async def _parsed_stream(parse: Callable[[bytes], object], messages: AsyncIterator[bytes]) -> AsyncIterator:
    async for data in messages:
        yield _parsed(parse, data)


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
