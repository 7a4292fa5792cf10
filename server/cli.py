"""`mnist-serve`: the gRPC inference server."""

from __future__ import annotations

from mnist_serving.common.processes import workers_skip_the_main_script
from mnist_serving.server import logs
from mnist_serving.server.app import serve
from mnist_serving.server.config import load_config


def main(argv: list[str] | None = None) -> int:
    workers_skip_the_main_script("mnist_serving.server")
    config = load_config(argv)
    logs.configure(config.log_level, config.log_format)
    if config.workers > 1:
        from mnist_serving.server.workers import run_workers

        return run_workers(config)
    return serve(config)


if __name__ == "__main__":
    raise SystemExit(main())
