"""One place that turns exceptions into gRPC statuses and records per-RPC metrics."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import grpc
from mnist_serving.server.errors import ServingError
from mnist_serving.server.metrics import Metrics

log = logging.getLogger(__name__)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as a time.monotonic() instant, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def unary(api: str, metrics_attr: str = "metrics") -> Callable:
    """Wrap a unary handler: typed errors → their status, anything else → INTERNAL (logged)."""

    def decorate(handler: Callable) -> Callable:
        method = handler.__name__

        @functools.wraps(handler)
        async def wrapper(self, request, context):  # noqa: ANN001, ANN202
            metrics: Metrics = getattr(self, metrics_attr)
            started = time.perf_counter()
            code = "OK"
            try:
                return await handler(self, request, context)
            except ServingError as exc:
                code = exc.code.name
                log.info("%s/%s failed: %s %s", api, method, code, exc)
                await context.abort(exc.code, str(exc))
            except grpc.aio.AbortError:
                code = "ABORTED"
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("%s/%s: internal error", api, method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
            finally:
                metrics.requests.labels(api, method, code).inc()
                metrics.latency.labels(api, method).observe(time.perf_counter() - started)

        return wrapper

    return decorate
