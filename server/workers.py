"""Several server processes sharing one port (SO_REUSEPORT), for more than one core's worth.

One Python process tops out near one core, so ``--workers N`` starts N independent server
processes that all listen on the same port; the kernel spreads incoming connections over
them (Linux). The parent only supervises: it forwards SIGTERM/SIGINT (each worker drains
gracefully), and restarts a worker that dies unexpectedly, so the others keep serving and
capacity comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import time
from contextlib import contextmanager

from mnist_serving.server.config import ServerConfig

log = logging.getLogger("mnist_serving.server.workers")

RESTART_BACKOFF = 1.0


@contextmanager
def reserve_port(host: str, port: int):  # noqa: ANN201
    """Bind (and hold) the port with SO_REUSEPORT so every worker can bind it too."""
    family = socket.AF_INET6 if ":" in host.strip("[]") or host == "[::]" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0:
        raise RuntimeError("SO_REUSEPORT is not available on this system")
    sock.bind((host.strip("[]") or "::", port))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def worker_settings(config: ServerConfig, port: int, index: int) -> ServerConfig:
    """One worker's settings: its own /metrics port (8000, 8001, ...), and whatever depends on
    the number of workers fixed here, before each worker becomes a single process."""
    metrics_port = config.metrics_port
    if metrics_port > 0:
        metrics_port += index
    return dataclasses.replace(config.resolved(), port=port, metrics_port=metrics_port, workers=1)


def _worker_main(config: ServerConfig) -> None:
    # Own process group: a terminal's Ctrl-C (sent to the whole group) reaches only the
    # parent, which forwards one signal; a second would mean "exit at once".
    os.setpgrp()
    from mnist_serving.server import logs
    from mnist_serving.server.app import serve

    logs.configure(config.log_level, config.log_format)
    raise SystemExit(serve(config, reuse_port=True))


def run_workers(config: ServerConfig) -> int:
    """Start ``config.workers`` processes on one port and supervise them until signalled."""
    context = multiprocessing.get_context("spawn")  # no gRPC state is ever forked
    with reserve_port(config.host, config.port) as port:
        processes: dict[int, multiprocessing.Process] = {}
        stopping = False

        def start(index: int) -> None:
            process = context.Process(
                target=_worker_main,
                args=(worker_settings(config, port, index),),
                name=f"mnist-serve-{index}",
                daemon=False,
            )
            process.start()
            processes[index] = process
            log.info("worker %d started (pid %d) on port %d", index, process.pid, port)

        draining: list[multiprocessing.Process] = []

        def forward(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True
            for process in processes.values():
                if process.is_alive():
                    if process not in draining:
                        draining.append(process)
                    os.kill(process.pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for index in range(config.workers):
            start(index)
        while True:
            time.sleep(0.2)
            for index, process in list(processes.items()):
                if process.is_alive():
                    continue
                if stopping:
                    continue
                log.error(
                    "worker %d (pid %d) exited with %s; restarting", index, process.pid, process.exitcode
                )
                if process.exitcode == 2:  # a start-up error: restarting would only loop
                    forward(signal.SIGTERM, None)
                    continue
                time.sleep(RESTART_BACKOFF)
                if not stopping:
                    start(index)
            if stopping and not any(p.is_alive() for p in processes.values()):
                break
        # Exit 0 when every worker that was running at shutdown drained cleanly.
        codes = [p.exitcode for p in draining] or [p.exitcode for p in processes.values()]
        return 0 if all(code == 0 for code in codes) else max(abs(c or 1) for c in codes)
