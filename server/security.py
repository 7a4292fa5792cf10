"""TLS / mutual TLS credentials and bearer-token authentication.

Health checks stay open without a token, so load balancers and Kubernetes probes work;
every other method needs ``authorization: Bearer <token>`` when tokens are configured.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from mnist_serving.server.config import ServerConfig
from mnist_serving.server.errors import StartupError

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


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
        tokens += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [t.encode() for t in tokens]


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that only answers UNAUTHENTICATED."""

    async def unary(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: object, context: grpc.aio.ServicerContext):  # noqa: ANN202
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks bearer tokens in constant time; health stays open for probes."""

    def __init__(self, tokens: list[bytes], on_denied: Callable[[str], None] | None = None) -> None:
        self.tokens = tokens
        self.on_denied = on_denied

    def _allowed(self, metadata: tuple) -> str | None:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing authorization metadata; expected 'authorization: Bearer <token>'"
        value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "authorization metadata must be 'Bearer <token>'"
        candidate = token.strip().encode()
        if not any(hmac.compare_digest(candidate, t) for t in self.tokens):
            return "invalid bearer token"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        problem = self._allowed(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        log.info("%s: UNAUTHENTICATED (%s)", method, problem)
        if self.on_denied:
            self.on_denied(method)
        return _denied(handler, problem)
