"""One place that turns exceptions into gRPC statuses, tags calls with request ids, and
records per-RPC metrics."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections.abc import Callable

import grpc

from mnist_serving.server.errors import ServingError
from mnist_serving.server.metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 128
# Generated ids: a random per-process prefix and a counter (unique, and cheap on the hot path).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as a time.monotonic() instant, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's ``x-request-id`` (printable, truncated) or a new one; echoed in trailers."""
    value = ""
    for key, item in context.invocation_metadata() or ():
        if key == REQUEST_ID:
            value = item if isinstance(item, str) else item.decode(errors="replace")
            break
    value = "".join(ch for ch in value[:MAX_REQUEST_ID] if ch.isprintable())
    if not value:
        value = f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
    context.set_trailing_metadata(((REQUEST_ID, value),))
    return value


def failure(api: str, method: str, rid: str, exc: BaseException | None, code: str) -> None:
    """One log line per failed request, with its id (and the traceback for internal errors)."""
    fields = {"api": api, "method": method, "request_id": rid, "code": code}
    if code == "INTERNAL":
        log.error("%s/%s [%s]: internal error", api, method, rid, exc_info=exc, extra={"fields": fields})
    else:
        log.info("%s/%s [%s] failed: %s %s", api, method, rid, code, exc, extra={"fields": fields})


def unary(api: str) -> Callable:
    """Wrap a unary handler: typed errors → their status, anything else → INTERNAL (logged)."""

    def decorate(handler: Callable) -> Callable:
        method = handler.__name__
        children: dict = {}  # labelled metric children, looked up once per (metrics, code)

        def record(metrics: Metrics, code: str, seconds: float) -> None:
            key = (id(metrics), code)
            pair = children.get(key)
            if pair is None:
                pair = children[key] = (
                    metrics.requests.labels(api, method, code),
                    metrics.latency.labels(api, method),
                )
            pair[0].inc()
            pair[1].observe(seconds)

        @functools.wraps(handler)
        async def wrapper(self, request, context):  # noqa: ANN001, ANN202
            metrics: Metrics = self.metrics
            started = time.perf_counter()
            rid = request_id(context)
            code = "OK"
            admitted = False
            try:
                self.lifecycle.enter()
                admitted = True
                return await handler(self, request, context)
            except ServingError as exc:
                code = exc.code.name
                failure(api, method, rid, exc, code)
                await context.abort(exc.code, str(exc))
            except grpc.aio.AbortError:
                code = "ABORTED"
                raise
            except Exception as exc:
                code = "INTERNAL"
                failure(api, method, rid, exc, code)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")
            finally:
                if admitted:
                    self.lifecycle.leave()
                record(metrics, code, time.perf_counter() - started)

        return wrapper

    return decorate
