"""Server settings: every flag is also an ``MNIST_SERVING_*`` environment variable.

Command-line flags win over the environment, which wins over the defaults, so a container
can be configured entirely by environment and a person can still override one flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mnist_serving.common.cpus import available_cpus

ENV_PREFIX = "MNIST_SERVING_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setting(
    default: Any,
    help: str,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    repeated: bool = False,
) -> Any:
    """A flag: its default, help text, allowed values and parser live on the field itself.

    ``parse`` is needed where the default does not say the type (None for optional values).
    ``repeated``: the flag may be given several times (a tuple; its variable is comma-separated).
    """
    metadata = {"help": help, "choices": choices, "parse": parse, "repeated": repeated}
    return dataclasses.field(default=default, metadata=metadata)


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
    model_repository: Path = setting(
        Path("models"),
        "Triton-style repository: <root>/<model>/<version>/model.onnx.",
    )
    model_version: int | None = setting(
        None,
        "Serve this version of 'mnist' instead of the newest.",
        parse=int,
    )
    host: str = setting(
        "[::]",
        "Address to listen on ('[::]' = all interfaces, '127.0.0.1' = loopback only).",
    )
    port: int = setting(
        50051,
        "gRPC port (0 picks a free port, printed at start-up).",
    )
    metrics_port: int = setting(
        8000,
        "Prometheus /metrics (and /ready) HTTP port (0 picks a free port, -1 disables).",
    )
    metrics_host: str = setting(
        "0.0.0.0",
        "Address the metrics listener binds (e.g. 127.0.0.1 to keep it local).",
    )
    http_port: int = setting(
        8080,
        "KServe v2 REST API and the drawing page, on --host (0 picks a free port, -1 disables).",
    )
    device: str = setting(
        "auto",
        "auto (CUDA if onnxruntime-gpu sees a GPU, else CPU), cpu or cuda (error if unavailable).",
        choices=("auto", "cpu", "cuda"),
    )
    intra_op_threads: int = setting(
        -1,
        "onnxruntime threads per model run. -1: small runs on one thread (it leaves the other "
        "cores to gRPC and decoding), runs of at least 64 images on every core this process may "
        "use, divided by --workers; 0: onnxruntime's own default; N: N threads for every run.",
    )
    workers: int = setting(
        1,
        "Server processes sharing the port (SO_REUSEPORT, Linux); each gets its own /metrics port.",
    )
    inline_max_images: int = setting(
        -1,
        "Runs of at most this many images skip the onnxruntime thread (-1: 8 if cores/--workers < 2).",
    )
    inline_big_runs: bool = setting(
        True,
        "Runs on the every-core session (--intra-op-threads -1, runs of at least 64 images) run on "
        "the event loop thread, which becomes one of onnxruntime's threads (false: on the model thread).",
    )
    max_batch_size: int = setting(
        256,
        "Most images in one onnxruntime run; bigger requests are split into runs of this size.",
    )
    max_batch_delay: int = setting(
        0,
        "Microseconds to wait for more requests before running a partial batch (0: never wait).",
    )
    max_queue: int = setting(
        1024,
        "Most requests accepted and not yet answered; beyond it RESOURCE_EXHAUSTED.",
    )
    max_queue_images: int = setting(
        262144,
        "Most images accepted and not yet answered (bounds memory); beyond it RESOURCE_EXHAUSTED.",
    )
    max_request_images: int = setting(
        65536,
        "Most images in one request.",
    )
    max_request_pixels: int = setting(
        500_000_000,
        "Most pixels one request's encoded images may decode to (2,000 400x400 scans are 320M).",
    )
    decode_workers: int = setting(
        -1,
        "Processes decoding images off the event loop (-1: the CPUs this process may use / "
        "--workers; 0: on the event loop).",
    )
    max_decode_ms: float = setting(
        500.0,
        "Most milliseconds of CPU one encoded image may take to decode (on a busy machine, at "
        "most ten times this in all); a decode worker that overruns it is stopped and replaced, "
        "and the image gets its own INVALID_ARGUMENT.",
    )
    max_message_mb: int = setting(
        128,
        "Largest gRPC message, each way, in MiB (65,536 raw images are 49 MiB).",
    )
    max_http_body_mb: int = setting(
        16,
        "Largest REST request body in MiB (256 images as FP32 JSON are about 5 MB); "
        "a larger one is refused with 413 before it is read.",
    )
    http_header_timeout: float = setting(
        10.0,
        "Seconds a REST caller has to send a request's line and headers before 408 and a closed "
        "connection (heads are also capped at 64 KiB: 431).",
    )
    max_connection_age: float = setting(
        60.0,
        "Seconds after which a client's gRPC connection is asked to reconnect (GOAWAY, with "
        "gRPC's jitter of a tenth), so clients re-resolve and new replicas get calls; 0: never "
        "(behind a proxy that balances every call, as compose's lb does).",
    )
    max_connection_age_grace: float = setting(
        300.0,
        "Seconds the calls still open on such a connection may take before it is closed (a "
        "longer stream is cut and must be reopened).",
    )
    max_concurrent_rpcs: int = setting(
        4096,
        "Calls handled at once; beyond it gRPC answers RESOURCE_EXHAUSTED before any work.",
    )
    model_load_timeout: float = setting(
        120.0,
        "Seconds a model version may take to load, warm up and self-check before it is refused.",
    )
    batching: bool = setting(
        True,
        "Coalesce concurrent requests into shared runs (false: one run per request chunk).",
    )
    model_control_mode: str = setting(
        "poll",
        "poll: load every model at start and new versions as they appear (Triton's name); "
        "explicit: only --load-model at start, then load and unload through the repository API "
        "(one process: not with --workers); none: load every model at start, never change.",
        choices=("poll", "explicit", "none"),
    )
    load_model: tuple[str, ...] = setting(
        (),
        "With --model-control-mode explicit: a model to load at start (repeat the flag for more).",
        parse=str,
        repeated=True,
    )
    poll_interval: float = setting(
        5.0,
        "Seconds between model-repository scans for new versions, in poll mode (0: no scans).",
    )
    tls_cert: Path | None = setting(
        None,
        "Server certificate chain (PEM); with --tls-key, serve TLS instead of plaintext.",
        parse=Path,
    )
    tls_key: Path | None = setting(
        None,
        "Server private key (PEM).",
        parse=Path,
    )
    tls_client_ca: Path | None = setting(
        None,
        "CA bundle (PEM) for mutual TLS: clients without a certificate it signed are refused.",
        parse=Path,
    )
    auth_token: str | None = setting(
        None,
        "Bearer token required in `authorization: Bearer <token>` metadata (health stays open).",
        parse=str,
    )
    auth_token_file: Path | None = setting(
        None,
        "File of accepted bearer tokens, one per line (combined with --auth-token).",
        parse=Path,
    )
    control_token_file: Path | None = setting(
        None,
        "File of bearer tokens (one per line) that may load and unload models; they are also "
        "accepted for every other call. On a server with any token, load and unload need one.",
        parse=Path,
    )
    grace: float = setting(
        10.0,
        "Seconds to finish accepted requests after SIGTERM/SIGINT before exiting.",
    )
    log_level: str = setting(
        "INFO",
        "Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).",
        choices=LOG_LEVELS,
        parse=str.upper,
    )
    log_format: str = setting(
        "text",
        "text or json.",
        choices=("text", "json"),
    )

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

    def resolved(self) -> ServerConfig:
        """The settings with every automatic value (-1) turned into a count, once, under its own
        name: decode processes and inline images depend on the cores per worker process."""
        per_worker = available_cpus() / max(1, self.workers)
        decode_workers = self.decode_workers
        if decode_workers < 0:
            decode_workers = max(1, int(per_worker))
        inline = self.inline_max_images
        if inline < 0:
            # A run of 8 images takes about 0.07 ms on one core: less than the hand-off to a
            # thread and back. The hand-off pays only when the thread has a core of its own.
            inline = 8 if per_worker < 2 else 0
        return dataclasses.replace(self, decode_workers=decode_workers, inline_max_images=inline)

    @property
    def run_threads(self) -> tuple[int, int]:
        """(onnxruntime threads for small runs, for runs of ``BIG_RUN`` images or more): with
        -1, one thread, and every core this process may use divided among its --workers."""
        if self.intra_op_threads < 0:
            return 1, max(1, available_cpus() // max(1, self.workers))
        return self.intra_op_threads, self.intra_op_threads

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def max_http_body_bytes(self) -> int:
        return self.max_http_body_mb * 1024 * 1024


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{text}'")


def _converter(item: dataclasses.Field) -> Callable[[str], Any]:
    parse = item.metadata["parse"]
    if parse is not None:
        return parse
    if isinstance(item.default, bool):
        return _parse_bool
    return type(item.default)


def build_parser(prog: str = "mnist-serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the MNIST classifier over gRPC (own API + KServe v2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for item in fields(ServerConfig):
        parser.add_argument(
            "--" + item.name.replace("_", "-"),
            dest=item.name,
            help=f"{item.metadata['help']} [env {_env_name(item.name)}]",
            default=list(item.default) if item.metadata["repeated"] else item.default,
            type=_converter(item),
            choices=item.metadata["choices"],
            action="append" if item.metadata["repeated"] else "store",
        )
    return parser


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    """Defaults, then ``MNIST_SERVING_*`` variables, then flags."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    env_defaults = {}
    for item in fields(ServerConfig):
        value = environ.get(_env_name(item.name))
        if value is not None and value != "":
            convert = _converter(item)
            try:
                if item.metadata["repeated"]:
                    env_defaults[item.name] = [convert(v.strip()) for v in value.split(",") if v.strip()]
                else:
                    env_defaults[item.name] = convert(value)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{_env_name(item.name)}={value!r}: {exc}")
    parser.set_defaults(**env_defaults)
    for name, value in env_defaults.items():
        choices = ServerConfig.__dataclass_fields__[name].metadata["choices"]
        if choices is not None and value not in choices:
            parser.error(f"{_env_name(name)}={value!r}: expected one of {', '.join(choices)}")
    args = parser.parse_args(argv)
    values = {item.name: getattr(args, item.name) for item in fields(ServerConfig)}
    for item in fields(ServerConfig):  # append adds to the default list: flags replace it
        if item.metadata["repeated"]:
            given = values[item.name]
            default = env_defaults.get(item.name, item.default)
            values[item.name] = tuple(given[len(default) :] if len(given) > len(default) else given)
    config = ServerConfig(**values)
    if args.auth_token == "":
        parser.error("--auth-token: empty; give a token, or leave the flag out to turn tokens off")
    for name in (
        "max_batch_size",
        "max_queue",
        "max_queue_images",
        "max_request_images",
        "workers",
        "max_message_mb",
        "max_http_body_mb",
        "max_concurrent_rpcs",
    ):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if config.max_decode_ms <= 0:
        parser.error("--max-decode-ms must be above 0")
    if config.max_connection_age < 0 or config.max_connection_age_grace < 0:
        parser.error("--max-connection-age and --max-connection-age-grace must be >= 0 seconds")
    if config.http_header_timeout <= 0:
        parser.error("--http-header-timeout must be above 0 seconds")
    if config.max_batch_delay < 0:
        parser.error("--max-batch-delay must be >= 0 microseconds")
    if (config.tls_cert is None) != (config.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if config.model_control_mode == "explicit" and config.workers > 1:
        parser.error(
            "--model-control-mode explicit: not with --workers > 1 "
            "(each process would load and unload its own models)"
        )
    if config.load_model and config.model_control_mode != "explicit":
        parser.error("--load-model: only with --model-control-mode explicit (the others load every model)")
    if config.tls_client_ca is not None and config.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return config.resolved()


def flags_markdown() -> str:
    """The flags table of docs/operations.md (regenerate with `python -m mnist_serving.server.config`)."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for item in fields(ServerConfig):
        shown = "—" if item.default in (None, ()) else f"`{item.default}`"
        flag, help_text = item.name.replace("_", "-"), item.metadata["help"]
        rows.append(f"| `--{flag}` | `{_env_name(item.name)}` | {shown} | {help_text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(flags_markdown())
