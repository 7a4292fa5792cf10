"""The HTTP port: uvicorn serving an ASGI app in the gRPC server's own event loop.

The socket is opened here, so a taken port is a one-line start-up error (uvicorn alone
would exit the process), and shared with SO_REUSEPORT between ``--workers`` processes.
uvicorn's own signal handling is not used: the server's drain decides when it stops.

uvicorn leaves a request's head (its line and headers) without a deadline or a size limit,
and the number of connections without a cap; ``GuardedProtocol`` adds the three, so slow or
idle callers cannot hold the descriptors and memory gRPC, health and metrics need.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
import time

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mnist_serving.server.config import ServerConfig
from mnist_serving.server.errors import StartupError


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it each response waits for the caller's delayed ACK (about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"--http-port {port}: cannot listen on {host} ({exc.strerror})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


MAX_HEAD_BYTES = 64 * 1024
RESERVED_DESCRIPTORS = 256  # kept for gRPC, health, metrics, the repository scan and models


def connection_cap() -> int:
    """HTTP connections allowed at once: half the descriptors left after the reserve, once
    the soft open-files limit is raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not permitted, or unlimited: keep what we have
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, (soft - RESERVED_DESCRIPTORS) // 2)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit for each request's head,
    and a cap on open connections (set by ``HttpListener``)."""

    max_connections = 1024
    head_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes, self._in_head, self._refused = 0, True, False
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            self._refuse(b"503 Service Unavailable")
            return
        self._start_head_timer()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._refuse, b"408 Request Timeout")

    def _refuse(self, status: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:  # counted before parsing: httptools holds a header until it is whole
            end = data.find(b"\r\n\r\n")  # a body in the same packet is not part of the head
            self._head_bytes += len(data) if end < 0 else end
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(b"431 Request Header Fields Too Large")
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head_timer()  # the next request on a kept-alive connection: its own deadline

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class _EveryTenSeconds(logging.Filter):
    """asyncio logs each failed accept() when descriptors run out; one line in ten seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if "out of system resource" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self._last < 10.0:
            return False
        self._last = now
        return True


logging.getLogger("asyncio").addFilter(_EveryTenSeconds())


class HttpListener:
    """One uvicorn server on one socket; ``start`` returns the port it listens on."""

    def __init__(self, app: object, config: ServerConfig, reuse_port: bool = False) -> None:
        self.app, self.config, self.reuse_port = app, config, reuse_port
        self.server: uvicorn.Server | None = None
        self._ticks: asyncio.Task | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> int:
        config = self.config
        self._socket = _socket(config.host, config.http_port, self.reuse_port)
        tls = {}
        if config.tls_cert and config.tls_key:
            tls = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)}
            if config.tls_client_ca:  # mutual TLS, as on the gRPC port
                tls |= {"ssl_ca_certs": str(config.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        protocol = type(
            "Guarded",
            (GuardedProtocol,),
            {"max_connections": connection_cap(), "head_timeout": config.http_header_timeout},
        )
        settings = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=config.grace,
            timeout_keep_alive=5,
            http=protocol,
            ws="none",  # no WebSocket routes: nothing to import a WebSocket stack for
            **tls,
        )
        settings.load()
        self.server = uvicorn.Server(settings)
        self.server.lifespan = settings.lifespan_class(settings)
        await self.server.startup(sockets=[self._socket])
        # The date header and exit flag are kept by uvicorn's tick loop.
        self._ticks = asyncio.get_running_loop().create_task(self.server.main_loop(), name="http-ticks")
        return self._socket.getsockname()[1]

    async def stop(self, timeout: float = 0.0) -> None:
        """Close the port and let open responses finish within ``timeout`` seconds (what is
        left of the grace period: a stalled upload never extends the shutdown)."""
        if self.server is None:
            return
        self.server.config.timeout_graceful_shutdown = timeout
        self.server.should_exit = True
        if self._ticks is not None:
            await self._ticks
        await self.server.shutdown(sockets=[self._socket] if self._socket else None)
        self.server = None
