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
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from mnist_serving.common import __version__
from mnist_serving.common.contract import MODEL_NAME
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from mnist_serving.server import http_listener, security, tracing
from mnist_serving.server.classifier_servicer import ClassifierServicer
from mnist_serving.server.config import ServerConfig
from mnist_serving.server.dataplane import DataPlane
from mnist_serving.server.decode_pool import DecodePool
from mnist_serving.server.errors import StartupError
from mnist_serving.server.grpc_adapter import DataPlaneInterceptor, GenericHandlersOnly
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.model_control import ModelControl
from mnist_serving.server.models import ModelStore
from mnist_serving.server.rest import RestFrontEnd
from mnist_serving.server.runner import BIG_RUN, select_providers
from mnist_serving.server.v2_servicer import InferenceServicer

log = logging.getLogger("mnist_serving.server")

SAME_SIGNAL_WINDOW = 1.0  # seconds: a signal this soon after the first is the same one delivered twice
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Classifier"].full_name,
    v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


class MnistServer:
    """One server process; ``run()`` serves until SIGTERM/SIGINT, then drains and returns."""

    def __init__(self, config: ServerConfig, reuse_port: bool = False) -> None:
        config = config.resolved()
        self.config = config
        self.reuse_port = reuse_port
        self.metrics = Metrics()
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self.http: http_listener.HttpListener | None = None
        self._stop = asyncio.Event()
        self._first_signal: float | None = None  # time.monotonic() of the signal that began the drain
        self.store = ModelStore(
            config.model_repository,
            select_providers(config.device),
            config.batching_settings,
            self.metrics,
            run_threads=config.run_threads,
            pinned_version=config.model_version,
            inline_max_images=config.inline_max_images,
            inline_big_runs=config.inline_big_runs,
            mode=config.model_control_mode,
            requested=config.load_model,
            device=config.device,
        )
        self.control = ModelControl(
            self.store, config.model_load_timeout, config.poll_interval, self.publish_readiness
        )
        self.decoder = DecodePool(config.decode_workers, config.max_request_pixels, config.max_decode_ms)
        tracing.configure()
        self.dataplane = DataPlane(
            self.store,
            self.metrics,
            security.load_tokens(config),
            self.decoder,
            control=self.control,
            control_tokens=security.load_control_tokens(config),
            max_request_images=config.max_request_images,
        )

    async def publish_readiness(self) -> None:
        """Health follows the data plane's one readiness verdict."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.dataplane.ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    # --- start-up ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the port (health NOT_SERVING), then load and warm up, then turn SERVING.

        A worker sharing the port (``--workers``) loads first and opens the port only then:
        the kernel hands each new connection to any socket listening on the port, and one
        still loading could only answer UNAVAILABLE while the other workers are ready."""
        self.store.check_repository()
        # Before the port opens: its workers must not be forked from a process running gRPC.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.decoder.start)
        # A worker that cannot be replaced turns health NOT_SERVING until one can (feeder threads).
        self.decoder.on_health_change = lambda: loop.call_soon_threadsafe(
            lambda: loop.create_task(self.publish_readiness())
        )
        if self.reuse_port:
            await self.load_models()
            await self.start_transport()
        else:
            await self.start_transport()
            await self.load_models()
        if self.dataplane.ready():
            log.info("ready: health SERVING")
        else:
            log.info("no model loaded (explicit model control): ready once one is loaded")
        self.control.start_polling()

    async def start_transport(self) -> None:
        config = self.config
        await self.publish_readiness()
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Only worker processes share a port; a lone server must not silently share one.
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
        ]
        if config.max_connection_age > 0:  # clients reconnect now and then: new replicas get calls
            options += [
                ("grpc.max_connection_age_ms", round(config.max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", round(config.max_connection_age_grace * 1000)),
            ]
        credentials = security.server_credentials(config)
        if (self.dataplane.tokens or self.dataplane.control_tokens) and credentials is None:
            log.warning(
                "bearer tokens without TLS: tokens cross the network in clear text; "
                "add --tls-cert and --tls-key (or terminate TLS in front of the server)"
            )
        self.server = grpc.aio.server(
            options=options,
            interceptors=[DataPlaneInterceptor(self.dataplane)],
            # Beyond this many calls at once, gRPC itself answers RESOURCE_EXHAUSTED.
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        services = GenericHandlersOnly(self.server)  # no per-method cost on every call
        pb_grpc.add_ClassifierServicer_to_server(
            ClassifierServicer(self.dataplane, config.max_request_images), services
        )
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane, config.max_request_images), services
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, services)
        names = (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        # enable_server_reflection would pick the asyncio servicer only for a grpc.aio.Server itself.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), services
        )
        address = f"{config.host}:{config.port}"
        try:
            self.port = (
                self.server.add_secure_port(address, credentials)
                if credentials
                else self.server.add_insecure_port(address)
            )
        except RuntimeError:  # grpcio's way of saying the address is taken or invalid
            self.port = 0
        if self.port == 0:
            raise StartupError(
                f"--port {config.port}: cannot listen on {address} (in use, or not an address here)"
            )
        if config.metrics_port >= 0:
            try:
                self.metrics_port = self.metrics.serve_http(
                    config.metrics_port, config.metrics_host, ready=self.dataplane.ready
                )
            except OSError as exc:
                where = f"{config.metrics_host} ({exc.strerror})"
                raise StartupError(
                    f"--metrics-port {config.metrics_port}: cannot listen on {where}"
                ) from None
            print(f"serving metrics on {config.metrics_host}:{self.metrics_port}", flush=True)
        if config.http_port >= 0:
            front_end = RestFrontEnd(self.dataplane, config.max_request_images, config.max_http_body_bytes)
            self.http = http_listener.HttpListener(front_end.app, config, self.reuse_port)
            self.http_port = await self.http.start()
            print(f"serving HTTP on {config.host}:{self.http_port}", flush=True)
        await self.server.start()
        security_mode = ("mutual TLS" if config.tls_client_ca else "TLS") if credentials else "plaintext"
        log.info(
            "mnist-serving %s listening on %s:%d (%s%s)",
            __version__,
            config.host,
            self.port,
            security_mode,
            ", bearer tokens required" if self.dataplane.tokens else "",
        )
        # Machine-readable line for supervisors and tests (the port may have been 0).
        print(f"serving gRPC on {config.host}:{self.port}", flush=True)

    async def load_models(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        # Off the event loop: health checks keep answering NOT_SERVING while this runs.
        loading = loop.run_in_executor(None, self.store.load_initial)
        try:
            models = await asyncio.wait_for(loading, config.model_load_timeout)
        except TimeoutError:
            limit = f"--model-load-timeout {config.model_load_timeout:g} s"
            raise StartupError(f"models not loaded within {limit}") from None
        for model in models:
            self.store.install(model)
        if models:
            first = next((m for m in models if m.name == MODEL_NAME), models[0])
            small, big = first.runner.threads
            log.info(
                "provider %s; onnxruntime threads %s (runs of %d images or more: %s)",
                first.runner.provider,
                small or "default",
                BIG_RUN,
                big or "default",
            )
        log.info(
            "batching %s: max batch %d images, max delay %d us, max queue %d requests",
            "on" if config.batching else "off",
            config.max_batch_size,
            config.max_batch_delay,
            config.max_queue,
        )
        await self.publish_readiness()
        log.info("model control mode %s", config.model_control_mode)

    async def poll_once(self) -> None:
        """One scan of the repository in poll mode (``ModelControl.poll_once``)."""
        await self.control.poll_once()

    # --- shutdown ------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        """The first signal drains; one more, a second or more later, exits at once. A copy
        within ``SAME_SIGNAL_WINDOW`` is the same request delivered twice (``timeout``, make and
        other supervisors signal the process and its group), not a second one."""
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._first_signal is not None:
            if now - self._first_signal < SAME_SIGNAL_WINDOW:
                log.info(
                    "%s again within %g s (sent to the process group too): still draining",
                    name,
                    SAME_SIGNAL_WINDOW,
                )
                return
            log.warning("second signal (%s): exiting at once", name)
            os._exit(1)
        self._first_signal = now
        log.info("%s: draining (grace %.1f s)", name, self.config.grace)
        self._stop.set()

    async def stop(self) -> None:
        """Health NOT_SERVING at once, refuse new calls, answer accepted ones, then stop."""
        self.control.stop_polling()
        await self.health.enter_graceful_shutdown()
        started = time.monotonic()
        # New calls are answered UNAVAILABLE (clients retry elsewhere) while accepted ones finish.
        drained = await self.dataplane.drain(self.config.grace)
        if not drained:
            log.warning("grace period over with %d calls unanswered", self.dataplane.inflight)
        remaining = max(0.0, self.config.grace - (time.monotonic() - started))
        if self.server is not None:
            await self.server.stop(remaining)
        if self.http is not None:  # what is left of the grace period, not a second one
            await self.http.stop(max(0.0, self.config.grace - (time.monotonic() - started)))
        await self.store.close()
        self.decoder.close()
        tracing.shutdown()
        await self.control.close()
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
            if self.http is not None:
                await self.http.stop()
            self.decoder.close()
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
