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


def _token_file(path: Path, flag: str) -> list[str]:
    text = _read(path, flag).decode()
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_tokens(config: ServerConfig) -> list[bytes]:
    """The inference tokens (--auth-token, --auth-token-file)."""
    tokens = [config.auth_token] if config.auth_token else []
    if config.auth_token_file is not None:
        tokens += _token_file(config.auth_token_file, "--auth-token-file")
    return [t.encode() for t in tokens]


def load_control_tokens(config: ServerConfig) -> list[bytes]:
    """The tokens that may load and unload models (--control-token-file); an empty file is an
    error, as it would lock model control without saying so."""
    if config.control_token_file is None:
        return []
    tokens = _token_file(config.control_token_file, "--control-token-file")
    if not tokens:
        raise StartupError(f"--control-token-file {config.control_token_file}: no token in it")
    return [t.encode() for t in tokens]
