"""The HTTP port: uvicorn serving an ASGI app in the gRPC server's own event loop.

The socket is opened here, so a taken port is a one-line start-up error (uvicorn alone
would exit the process), and shared with SO_REUSEPORT between ``--workers`` processes.
uvicorn's own signal handling is not used: the server's drain decides when it stops.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import uvicorn

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
        settings = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=config.grace,
            http="httptools",
            **tls,
        )
        settings.load()
        self.server = uvicorn.Server(settings)
        self.server.lifespan = settings.lifespan_class(settings)
        await self.server.startup(sockets=[self._socket])
        # The date header and exit flag are kept by uvicorn's tick loop.
        self._ticks = asyncio.get_running_loop().create_task(self.server.main_loop(), name="http-ticks")
        return self._socket.getsockname()[1]

    async def stop(self) -> None:
        """Close the port and let open responses finish (within the grace period)."""
        if self.server is None:
            return
        self.server.should_exit = True
        if self._ticks is not None:
            await self._ticks
        await self.server.shutdown(sockets=[self._socket] if self._socket else None)
        self.server = None
