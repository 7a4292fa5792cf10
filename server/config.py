"""Server settings: every flag is also an ``MNIST_SERVING_*`` environment variable.

Command-line flags win over the environment, which wins over the defaults, so a container
can be configured entirely by environment and a person can still override one flag.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

ENV_PREFIX = "MNIST_SERVING_"
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


@dataclass(frozen=True)
class BatchingSettings:
    """What each model's dynamic batcher needs, in its own units (seconds, images, requests)."""

    max_batch_size: int = 256
    max_delay_s: float = 0.0
    max_queue: int = 1024
    max_queue_images: int = 262144
    enabled: bool = True


@dataclass
class ServerConfig:
    model_repository: Path = Path("models")
    """Triton-style repository: <root>/<model>/<version>/model.onnx."""
    model_version: int | None = None
    """Serve this version of 'mnist' instead of the newest."""
    host: str = "[::]"
    """Address to listen on ('[::]' = all interfaces, '127.0.0.1' = loopback only)."""
    port: int = 50051
    """gRPC port (0 picks a free port, printed at start-up)."""
    metrics_port: int = 8000
    """Prometheus /metrics (and /ready) HTTP port (0 picks a free port, -1 disables)."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics listener binds (e.g. 127.0.0.1 to keep it local)."""
    http_port: int = 8080
    """KServe v2 REST API and the drawing page, on --host (0 picks a free port, -1 disables)."""
    device: str = "auto"
    """auto (CUDA if onnxruntime-gpu sees a GPU, else CPU), cpu or cuda (error if unavailable)."""
    intra_op_threads: int = 1
    """onnxruntime threads per model run (1 leaves the other cores to gRPC and decoding; 0: one per core)."""
    workers: int = 1
    """Server processes sharing the port (SO_REUSEPORT, Linux); each gets its own /metrics port."""
    inline_max_images: int = -1
    """Runs of at most this many images skip the onnxruntime thread (-1: 8 if cores/--workers < 2)."""
    max_batch_size: int = 256
    """Most images in one onnxruntime run; bigger requests are split into runs of this size."""
    max_batch_delay: int = 0
    """Microseconds to wait for more requests before running a partial batch (0: never wait)."""
    max_queue: int = 1024
    """Most requests accepted and not yet answered; beyond it RESOURCE_EXHAUSTED."""
    max_queue_images: int = 262144
    """Most images accepted and not yet answered (bounds memory); beyond it RESOURCE_EXHAUSTED."""
    max_request_images: int = 65536
    """Most images in one request."""
    max_request_pixels: int = 500_000_000
    """Most pixels one request's encoded images may decode to (2,000 400x400 scans are 320M)."""
    decode_workers: int = -1
    """Processes decoding images off the event loop (-1: cores / --workers; 0: on the event loop)."""
    max_message_mb: int = 128
    """Largest gRPC message, each way, in MiB (65,536 raw images are 49 MiB)."""
    max_concurrent_rpcs: int = 4096
    """Calls handled at once; beyond it gRPC answers RESOURCE_EXHAUSTED before any work."""
    model_load_timeout: float = 120.0
    """Seconds a model version may take to load, warm up and self-check before it is refused."""
    batching: bool = True
    """Coalesce concurrent requests into shared runs (false: one run per request chunk)."""
    poll_interval: float = 5.0
    """Seconds between model-repository scans for new versions (0 disables hot reload)."""
    tls_cert: Path | None = None
    """Server certificate chain (PEM); with --tls-key, serve TLS instead of plaintext."""
    tls_key: Path | None = None
    """Server private key (PEM)."""
    tls_client_ca: Path | None = None
    """CA bundle (PEM) for mutual TLS: clients without a certificate it signed are refused."""
    auth_token: str | None = None
    """Bearer token required in `authorization: Bearer <token>` metadata (health stays open)."""
    auth_token_file: Path | None = None
    """File of accepted bearer tokens, one per line (combined with --auth-token)."""
    grace: float = 10.0
    """Seconds to finish accepted requests after SIGTERM/SIGINT before exiting."""
    log_level: str = "INFO"
    """Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)."""
    log_format: str = "text"
    """text or json."""

    @property
    def batching_settings(self) -> BatchingSettings:
        """The flags as the batcher takes them (built here, once; --max-batch-delay is in µs)."""
        return BatchingSettings(
            max_batch_size=self.max_batch_size,
            max_delay_s=self.max_batch_delay / 1e6,
            max_queue=self.max_queue,
            max_queue_images=self.max_queue_images,
            enabled=self.batching,
        )

    @property
    def decode_processes(self) -> int:
        if self.decode_workers >= 0:
            return self.decode_workers
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))

    @property
    def inline_images(self) -> int:
        # A run of 8 images takes about 0.07 ms on one core: less than the hand-off to a thread
        # and back. The hand-off pays only when the thread has a core of its own to run on.
        if self.inline_max_images >= 0:
            return self.inline_max_images
        return 8 if (os.cpu_count() or 1) / max(1, self.workers) < 2 else 0

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{text}'")


_OPTIONAL_TYPES = {
    "model_version": int,
    "tls_cert": Path,
    "tls_key": Path,
    "tls_client_ca": Path,
    "auth_token": str,
    "auth_token_file": Path,
}


def _converter(name: str, default: object):  # noqa: ANN202
    if name in _OPTIONAL_TYPES:
        return _OPTIONAL_TYPES[name]
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, Path):
        return Path
    return type(default)


def build_parser(prog: str = "mnist-serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the MNIST classifier over gRPC (own API + KServe v2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    docs = _field_docs()
    defaults = ServerConfig()
    for item in fields(ServerConfig):
        default = getattr(defaults, item.name)
        flag = "--" + item.name.replace("_", "-")
        help_text = f"{docs.get(item.name, '')} [env {_env_name(item.name)}]"
        kwargs: dict = {
            "dest": item.name,
            "help": help_text,
            "default": default,
            "type": _converter(item.name, default),
        }
        if item.name in ("device",):
            kwargs["choices"] = ["auto", "cpu", "cuda"]
        if item.name == "log_format":
            kwargs["choices"] = ["text", "json"]
        if item.name == "log_level":
            kwargs["choices"] = LOG_LEVELS
            kwargs["type"] = str.upper
        parser.add_argument(flag, **kwargs)
    return parser


def _field_docs() -> dict[str, str]:
    """Each field's docstring (the string right after it in the class body)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ServerConfig))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = str(following.value.value)
    return docs


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    """Defaults, then ``MNIST_SERVING_*`` variables, then flags."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    defaults = ServerConfig()
    env_defaults = {}
    for item in fields(ServerConfig):
        value = environ.get(_env_name(item.name))
        if value is not None and value != "":
            convert = _converter(item.name, getattr(defaults, item.name))
            try:
                env_defaults[item.name] = convert(value)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{_env_name(item.name)}={value!r}: {exc}")
    parser.set_defaults(**env_defaults)
    args = parser.parse_args(argv)
    config = ServerConfig(**{item.name: getattr(args, item.name) for item in fields(ServerConfig)})
    if str(args.log_level).upper() not in LOG_LEVELS:
        parser.error(f"--log-level: {args.log_level!r}; expected one of {', '.join(LOG_LEVELS)}")
    args.log_level = str(args.log_level).upper()
    if args.auth_token == "":
        parser.error("--auth-token: empty; give a token, or leave the flag out to turn tokens off")
    for name in (
        "max_batch_size",
        "max_queue",
        "max_queue_images",
        "max_request_images",
        "workers",
        "max_message_mb",
        "max_concurrent_rpcs",
    ):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if config.max_batch_delay < 0:
        parser.error("--max-batch-delay must be >= 0 microseconds")
    if (config.tls_cert is None) != (config.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return config


def flags_markdown() -> str:
    """The flags table of docs/operations.md (regenerate with `python -m mnist_serving.server.config`)."""
    docs = _field_docs()
    defaults = ServerConfig()
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for item in fields(ServerConfig):
        default = getattr(defaults, item.name)
        shown = "—" if default is None else f"`{default}`"
        rows.append(
            f"| `--{item.name.replace('_', '-')}` | `{_env_name(item.name)}` | {shown} | {docs[item.name]} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(flags_markdown())
