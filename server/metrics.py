"""Prometheus metrics, on a registry of their own (so tests and several servers don't collide)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from mnist_serving.server.batch_stats import BatchStats, RunTiming

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MAX_THREADS = 64  # connections served at once on the metrics port
CONNECTION_TIMEOUT = 5.0


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mnist_serving_requests",
            "RPCs answered, by API, method and gRPC status.",
            ["api", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "mnist_serving_request_latency_seconds",
            "RPC handling time.",
            ["api", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "mnist_serving_inference_seconds",
            "onnxruntime run time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "mnist_serving_queue_depth", "Requests accepted and not yet answered.", ["model"], registry=r
        )
        self.queue_wait = Histogram(
            "mnist_serving_queue_wait_seconds",
            "Time from acceptance to the start of the request's run.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_loads = Counter(
            "mnist_serving_model_loads",
            "Model version loads, by result (ok/failed).",
            ["model", "version", "result"],
            registry=r,
        )
        self.auth_failures = Counter(
            "mnist_serving_auth_failures", "Calls refused UNAUTHENTICATED.", ["method"], registry=r
        )
        self.inflight = Gauge(
            "mnist_serving_inflight_requests", "Calls admitted and not yet answered.", registry=r
        )
        self.info = Info(
            "mnist_serving_model", "The model version and execution provider serving.", registry=r
        )

    def batch_observer(self, model: str) -> Callable[[RunTiming, list[float]], None]:
        """Time distributions a model's batcher reports after each run (children looked up once);
        its counts are read from its statistics record (``watch_batchers``)."""
        inference = self.inference.labels(model)
        queue_wait = self.queue_wait.labels(model)

        def observe(timing: RunTiming, waits: list[float]) -> None:
            inference.observe(timing.seconds)
            for wait in waits:
                queue_wait.observe(wait)

        return observe

    def watch_batchers(self, source: Callable[[], Iterable[tuple[str, str, BatchStats]]]) -> None:
        """Images and batch sizes, read at each scrape from every served version's record."""
        self.registry.register(_BatcherCollector(source))

    def serve_http(self, port: int, addr: str = "0.0.0.0", ready: Callable[[], bool] | None = None) -> int:
        """Expose /metrics and /ready; returns the bound port (useful with port 0).

        /ready answers 200 only while the server takes calls (model loaded, not draining),
        so an HTTP-checking load balancer stops sending calls to a replica that drains.
        """
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict, start_response: Callable) -> list[bytes]:
            if environ.get("PATH_INFO") == "/ready":
                ok = ready is None or ready()
                start_response(
                    "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
                )
                return [b"SERVING\n" if ok else b"NOT_SERVING\n"]
            return metrics_app(environ, start_response)

        server_class = _ThreadingServer6 if ":" in addr else _ThreadingServer
        server = make_server(addr.strip("[]"), port, app, server_class, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server.server_port


class _BatcherCollector:
    def __init__(self, source: Callable[[], Iterable[tuple[str, str, BatchStats]]]) -> None:
        self.source = source

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        labels = ["model", "version"]
        images = CounterMetricFamily(
            "mnist_serving_images_classified", "Images run through the model.", labels=labels
        )
        sizes = HistogramMetricFamily(
            "mnist_serving_batch_size", "Images per onnxruntime run.", labels=labels
        )
        try:
            served = list(self.source())
        except RuntimeError:  # a reload changed the models while they were listed: list again
            served = list(self.source())
        for name, version, stats in served:
            runs = {size: entry.compute_infer.count for size, entry in list(stats.runs_by_size.items())}
            images.add_metric([name, version], sum(size * count for size, count in runs.items()))
            buckets = [(str(b), sum(c for size, c in runs.items() if size <= b)) for b in BATCH_BUCKETS]
            buckets.append(("+Inf", sum(runs.values())))
            sizes.add_metric([name, version], buckets, sum(size * count for size, count in runs.items()))
        yield images
        yield sizes


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most ``MAX_THREADS`` at once: a connection beyond them is
    closed at once, and an idle one is dropped after the handler's timeout."""

    daemon_threads = True
    block_on_close = False
    # socketserver's backlog of 5 leaves a burst of scrapers and probes retrying their SYNs
    # (1 s, 3 s, 7 s, ...) while the port has free threads; take them, and refuse at once.
    request_queue_size = 256

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_THREADS)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT  # seconds a connection may sit idle or send slowly

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes and health checks every second would flood the logs."""
