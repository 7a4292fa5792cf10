"""TLS / mutual TLS credentials and the accepted bearer tokens, read once at start-up.

The per-call token decision is the data plane's (``DataPlane.auth_problem``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from mnist_serving.server.config import ServerConfig
from mnist_serving.server.errors import StartupError

log = logging.getLogger(__name__)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{what} {path}: {exc.strerror}") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the config, or None for plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    pair = [(_read(config.tls_key, "--tls-key"), _read(config.tls_cert, "--tls-cert"))]
    if config.tls_client_ca is not None:
        return grpc.ssl_server_credentials(
            pair, root_certificates=_read(config.tls_client_ca, "--tls-client-ca"), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)


def load_tokens(config: ServerConfig) -> list[bytes]:
    tokens = [config.auth_token] if config.auth_token else []
    if config.auth_token_file is not None:
        text = _read(config.auth_token_file, "--auth-token-file").decode()
        lines = (line.strip() for line in text.splitlines())
        tokens += [line for line in lines if line and not line.startswith("#")]
    return [t.encode() for t in tokens]
