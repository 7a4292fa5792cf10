"""A gRPC proxy in front of a real server that answers a set number of batch calls, then
holds every further one until released: a job behind it stops part-way, whatever the
machine's speed, so a test can interrupt it there without racing it."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc

HELD_METHOD = "/mnist.v1.Classifier/ClassifyBatch"


class HoldingProxy:
    """Forwards every unary call to ``upstream`` as bytes; the ``allow``-th ClassifyBatch
    call onwards waits until :meth:`release` (or the proxy stops)."""

    def __init__(self, upstream: str, allow: int) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._allow = allow
        self._passed = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.holding = threading.Event()  # set once a call is held
        self._server = grpc.server(futures.ThreadPoolExecutor(8))
        self._server.add_generic_rpc_handlers([_Forward(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def _forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        if method == HELD_METHOD:
            with self._lock:
                self._passed += 1
                hold = self._passed > self._allow
            if hold:
                self.holding.set()
                self._released.wait()
        metadata = [(k, v) for k, v in context.invocation_metadata() if not k.startswith("grpc-")]
        call = self._channel.unary_unary(method)
        try:
            return call(request, metadata=metadata, timeout=context.time_remaining())
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> HoldingProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.stop(0)
        self._channel.close()


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, proxy: HoldingProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self._proxy._forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(handle)
