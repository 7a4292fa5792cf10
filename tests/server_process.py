"""Start the real `mnist-serve` as a subprocess on loopback and wait for it properly.

Readiness is awaited through the server's own machine-readable start-up line and the
gRPC health Watch stream, never by sleeping.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

STARTUP_TIMEOUT = 120


class ServerProcess:
    def __init__(
        self,
        repository: Path,
        *args: str,
        env: dict | None = None,
        log_path: Path | None = None,
        prefix: tuple[str, ...] = (),
        program: tuple[str, ...] | None = None,
    ) -> None:
        """``prefix``: a command to run the server under (``prlimit --nofile=...``);
        ``program``: what to run instead of ``mnist-serve`` (taking its flags)."""
        exe = shutil.which("mnist-serve", path=str(Path(sys.executable).parent)) or "mnist-serve"
        command = [
            *prefix,
            *(program or (exe,)),
            "--model-repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            *([] if "--http-port" in args else ["--http-port", "0"]),
            *args,
        ]
        self.log_path = log_path
        self.stop_called = False
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = self.metrics_port = self.http_port = None
        while self.port is None:
            line = self.lines.get(timeout=STARTUP_TIMEOUT)
            if line is None:
                raise RuntimeError(f"mnist-serve exited with {self.process.wait()} before listening")
            if m := re.match(r"serving metrics on .*:(\d+)$", line):
                self.metrics_port = int(m.group(1))
            if m := re.match(r"serving HTTP on .*:(\d+)$", line):
                self.http_port = int(m.group(1))
            if m := re.match(r"serving gRPC on .*:(\d+)$", line):
                self.port = int(m.group(1))
        self.address = f"127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}" if self.http_port else None

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.stdout.append(line)
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_serving(self, timeout: float = STARTUP_TIMEOUT) -> list[str]:
        """Follow health Watch until SERVING; returns the statuses seen on the way."""
        return wait_serving(self.address, timeout)

    def log_text(self) -> str:
        """What the server has logged so far ('' without a log file)."""
        return self.log_path.read_text() if self.log_path else ""

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching the labels (0 when absent)."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            sample, value = line.rsplit(" ", 1)
            if sample.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server (unless it has exited) and wait: its exit code."""
        self.stop_called = True
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        if self.log is not subprocess.DEVNULL and not self.log.closed:
            self.log.close()
        return code


def wait_serving(address: str, timeout: float = STARTUP_TIMEOUT) -> list[str]:
    """Follow a server's health Watch until SERVING; returns the statuses seen on the way."""
    seen = []
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for response in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=timeout):
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            seen.append(status)
            if status == "SERVING":
                return seen
    raise RuntimeError(f"server never became SERVING: {seen}")
