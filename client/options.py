"""Connection settings shared by ``Client`` and ``AsyncClient``: target, TLS, token, retries."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_SERVER = "localhost:50051"
MAX_MESSAGE = 256 * 1024 * 1024
RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 2000
MAX_BACKOFF = 2.0  # seconds, before jitter: after a long outage, retries keep coming this often


@dataclass(frozen=True)
class ClientOptions:
    """Connection settings shared by both clients."""

    server: str = ""
    timeout: float | None = 30.0  # each call's deadline in seconds, retries included; None: none
    retries: int = 3  # extra attempts after UNAVAILABLE, RESOURCE_EXHAUSTED or UNKNOWN
    backoff: float = 0.1  # first retry delay, doubled each time up to MAX_BACKOFF (with jitter)
    tls: bool = False
    root_certificates: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    token: str | None = None

    @property
    def target(self) -> str:
        return self.server or os.environ.get("MNIST_SERVING_SERVER") or DEFAULT_SERVER

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # After a replica dies, reconnect (to it or, through a balancer, to another) from
            # 100 ms on, not gRPC's default 1 s-and-growing, so retries find a live server.
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not (self.tls or self.root_certificates or self.client_certificate):
            return None

        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            read(self.root_certificates), read(self.client_key), read(self.client_certificate)
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        auth = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return auth + _trace_context()

    def open_aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel, secure when TLS is configured (made on the loop that uses it)."""
        credentials = self.credentials()
        if credentials is not None:
            return grpc.aio.secure_channel(self.target, credentials, self.channel_options())
        return grpc.aio.insecure_channel(self.target, self.channel_options())


try:  # a caller with OpenTelemetry: its current trace goes along (W3C traceparent)
    from opentelemetry import propagate as _propagate
except ImportError:  # pragma: no cover - the plain client does not need it
    _propagate = None


def _trace_context() -> tuple[tuple[str, str], ...]:
    if _propagate is None:
        return ()
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return tuple(carrier.items())
