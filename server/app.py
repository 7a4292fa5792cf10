"""Assembles the server: models, servicers, health, reflection, metrics, security, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mnist_serving import __version__
from mnist_serving.contract import MODEL_NAME
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from mnist_serving.server import security
from mnist_serving.server.classifier_servicer import ClassifierServicer
from mnist_serving.server.config import ServerConfig
from mnist_serving.server.errors import StartupError
from mnist_serving.server.lifecycle import Lifecycle
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.models import LoadedModel, ModelStore
from mnist_serving.server.runner import select_providers
from mnist_serving.server.v2_servicer import InferenceServicer

log = logging.getLogger("mnist_serving.server")

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Classifier"].full_name,
    v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


class MnistServer:
    """One server process; ``run()`` serves until SIGTERM/SIGINT, then drains and returns."""

    def __init__(self, config: ServerConfig, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.metrics = Metrics()
        self.ready = False
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self._watcher: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()
        self.lifecycle = Lifecycle()
        self.metrics.inflight.set_function(lambda: self.lifecycle.inflight)
        self.store = ModelStore(
            config.model_repository,
            select_providers(config.device),
            batcher_options={
                "max_batch_size": config.max_batch_size,
                "max_delay_s": config.max_batch_delay / 1e6,
                "max_queue": config.max_queue,
                "enabled": config.batching,
            },
            intra_op_threads=config.intra_op_threads,
            pinned_version=config.model_version,
            on_load=self._on_load,
            on_install=self._on_install,
        )

    # --- metrics wiring ----------------------------------------------------------------

    def _on_load(self, name: str, version: int, ok: bool, reason: str) -> None:
        self.metrics.model_loads.labels(name, str(version), "ok" if ok else "failed").inc()

    def _on_install(self, model: LoadedModel) -> None:
        batch_size = self.metrics.batch_size.labels(model.name)
        inference = self.metrics.inference.labels(model.name)
        images = self.metrics.images.labels(model.name)
        queue_wait = self.metrics.queue_wait.labels(model.name)

        def observe(size: int, seconds: float, waits: list[float]) -> None:
            batch_size.observe(size)
            inference.observe(seconds)
            images.inc(size)
            for wait in waits:
                queue_wait.observe(wait)

        model.batcher.on_batch = observe
        store = self.store
        self.metrics.queue_depth.labels(model.name).set_function(
            lambda name=model.name: sum(m.batcher.queue_depth for m in store.models.get(name, {}).values())
        )
        if model.name == MODEL_NAME:
            self.metrics.info.info(
                {
                    "version": model.version_str,
                    "model": model.name,
                    "provider": model.runner.provider,
                    "server_version": __version__,
                }
            )

    # --- start-up ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the port (health NOT_SERVING), then load and warm up, then turn SERVING."""
        self.store.check_repository()
        await self.start_transport()
        await self.load_models()

    async def start_transport(self) -> None:
        config = self.config
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Only worker processes share a port; a lone server must not silently share one.
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
        ]
        interceptors = []
        tokens = security.load_tokens(config)
        if tokens:
            interceptors.append(
                security.TokenAuthInterceptor(
                    tokens, on_denied=lambda method: self.metrics.auth_failures.labels(method).inc()
                )
            )
        credentials = security.server_credentials(config)
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        pb_grpc.add_ClassifierServicer_to_server(
            ClassifierServicer(self.store, self.metrics, config.max_request_images, self.lifecycle),
            self.server,
        )
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(
                self.store, self.metrics, config.max_request_images, lambda: self.ready, self.lifecycle
            ),
            self.server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        address = f"{config.host}:{config.port}"
        self.port = (
            self.server.add_secure_port(address, credentials)
            if credentials
            else self.server.add_insecure_port(address)
        )
        if self.port == 0:
            raise OSError(f"cannot bind {address}")
        if config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve_http(
                config.metrics_port, ready=lambda: self.ready and self.lifecycle.accepting
            )
            print(f"serving metrics on {config.host}:{self.metrics_port}", flush=True)
        await self.server.start()
        security_mode = ("mutual TLS" if config.tls_client_ca else "TLS") if credentials else "plaintext"
        log.info(
            "mnist-serving %s listening on %s:%d (%s%s)",
            __version__,
            config.host,
            self.port,
            security_mode,
            ", bearer tokens required" if tokens else "",
        )
        # Machine-readable line for supervisors and tests (the port may have been 0).
        print(f"serving gRPC on {config.host}:{self.port}", flush=True)

    async def load_models(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        # Off the event loop: health checks keep answering NOT_SERVING while this runs.
        for model in await loop.run_in_executor(None, self.store.load_initial):
            self.store.install(model)
        default = self.store.get("")
        log.info(
            "provider %s; onnxruntime threads %s",
            default.runner.provider,
            config.intra_op_threads or "default",
        )
        log.info(
            "batching %s: max batch %d images, max delay %d us, max queue %d requests",
            "on" if config.batching else "off",
            config.max_batch_size,
            config.max_batch_delay,
            config.max_queue,
        )
        self.ready = True
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("ready: health SERVING")
        if config.poll_interval > 0:
            self._watcher = loop.create_task(self._watch(), name="model-watcher")

    # --- hot reload ----------------------------------------------------------------------

    async def poll_once(self) -> None:
        """Load whatever new version the repository holds and swap it in."""
        loop = asyncio.get_running_loop()
        for name, version in await loop.run_in_executor(None, self.store.pending):
            model = await loop.run_in_executor(None, self.store.try_build, name, version)
            if model is None:
                continue
            previous = self.store.install(model)
            if previous is not None:
                # Requests already queued on the old version finish there; then it is dropped.
                task = loop.create_task(previous.batcher.close())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                await self.poll_once()
            except Exception:
                log.exception("model repository scan failed; current models keep serving")

    # --- shutdown ------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal (%s): exiting at once", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: draining (grace %.1f s)", signal.Signals(signum).name, self.config.grace)
        self._stop.set()

    async def stop(self) -> None:
        """Health NOT_SERVING at once, refuse new calls, answer accepted ones, then stop."""
        self.ready = False
        if self._watcher is not None:
            self._watcher.cancel()
        await self.health.enter_graceful_shutdown()
        started = time.monotonic()
        # New calls are answered UNAVAILABLE (clients retry elsewhere) while accepted ones finish.
        drained = await self.lifecycle.drain(self.config.grace)
        if not drained:
            log.warning("grace period over with %d calls unanswered", self.lifecycle.inflight)
        if self.server is not None:
            await self.server.stop(max(0.0, self.config.grace - (time.monotonic() - started)))
        await self.store.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        log.info("stopped")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
        except BaseException:
            if self.server is not None:
                await self.server.stop(0)
            raise
        await self._stop.wait()
        await self.stop()


def serve(config: ServerConfig, reuse_port: bool = False) -> int:
    """Run a server until signalled; returns the process exit code."""
    try:
        asyncio.run(MnistServer(config, reuse_port).run())
    except (StartupError, OSError) as exc:
        log.error("cannot start: %s", exc)
        print(f"mnist-serve: {exc}", file=sys.stderr)
        return 2
    return 0
