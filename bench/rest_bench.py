"""REST single-image calls against MLServer's REST, the ASGI stack chosen, and what tracing costs.

    python bench/rest_bench.py [--seconds 8] [--docs docs/benchmarks.md]

One sitting, h2load as the load (HTTP/1.1 for REST, h2 for gRPC), the same JSON body for
every REST server: one 28×28 image as a v2 UINT8 tensor of 784 values.

- REST: mnist-serve (default flags) against MLServer (its REST, the same ONNX model).
- The stack: the same v2 JSON parse-and-answer route on Starlette and on FastAPI, both on
  uvicorn with httptools, no model: what the framework alone costs per call.
- Tracing: mnist-serve's gRPC ModelInfer (h2load, 16 connections × 4 streams) with tracing
  off, and on with 1% sampling (OTLP/HTTP to a receiver on loopback).
"""

from __future__ import annotations

import argparse
import http.server
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import h2load_run  # noqa: E402
from docs_block import write_block  # noqa: E402
from run import Server, free_port, servers  # noqa: E402

from mnist_serving.common import model_repository  # noqa: E402
from mnist_serving.common.contract import MODEL_NAME  # noqa: E402
from mnist_serving.common.mnist_data import load_mnist  # noqa: E402

STACK_APPS = """
import json
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
import numpy as np

def answer(body: bytes) -> bytes:
    request = json.loads(body)
    values = np.asarray(request["inputs"][0]["data"], dtype=np.int64)
    return json.dumps({"model_name": "mnist", "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [int(values.argmax() % 10)]}]}).encode()

async def infer(request: Request) -> Response:
    return Response(answer(await request.body()), media_type="application/json")

starlette_app = Starlette(routes=[Route("/v2/models/mnist/infer", infer, methods=["POST"])])

try:
    from fastapi import FastAPI, Request as FastRequest

    fastapi_app = FastAPI()

    @fastapi_app.post("/v2/models/mnist/infer")
    async def fast_infer(request: FastRequest) -> Response:
        return Response(answer(await request.body()), media_type="application/json")
except ImportError:
    fastapi_app = None
"""


def h1load(url: str, body: Path, seconds: float, connections: int) -> dict:
    """h2load over HTTP/1.1 (one request at a time per connection), POSTing ``body``."""
    rps, codes = h2load_run.h2load(
        url, body, seconds, connections, 1, ("content-type: application/json",), ("--h1",)
    )
    return {
        "requests_per_s": rps,
        "http_2xx": codes[0] if codes else 0,
        "http_errors": sum(codes[1:]) if codes else -1,  # 3xx, 4xx, 5xx
    }


def check(url: str, body: bytes, label: int) -> None:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    got = next(o["data"] for o in answer["outputs"] if o["name"] == "label")
    if got != [label]:
        raise SystemExit(f"{url} answered {got}, expected [{label}]")


def wait_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError as exc:
            if getattr(exc, "code", None):  # any HTTP answer: it is up
                return
        time.sleep(0.3)  # polling another process until it listens
    raise SystemExit(f"{url} never answered")


class Sink(http.server.ThreadingHTTPServer):
    """Accepts OTLP/HTTP exports (and drops them), so traced runs export for real."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def rest_peers(model: Path, work: Path, body_file: Path, body: bytes, label: int, seconds: float) -> dict:
    ours = servers(model, [], quick=True)[0]
    figures = {}
    ours.start(work / "ours.log")
    try:
        url = f"http://127.0.0.1:{ours.http_port}/v2/models/{MODEL_NAME}/infer"
        check(url, body, label)
        figures["mnist-serving REST"] = h1load(url, body_file, seconds, 16)
    finally:
        ours.stop()
    mlserver = HERE / ".venvs" / "mlserver" / "bin" / "mlserver"
    if mlserver.exists():
        peer = next(s for s in servers(model, ["mlserver"]) if s.name.startswith("MLServer"))
        peer.start(work / "mlserver.log")
        try:
            url = f"http://127.0.0.1:{peer.http_port}/v2/models/{MODEL_NAME}/infer"
            check(url, body, label)
            figures["MLServer REST"] = h1load(url, body_file, seconds, 16)
        finally:
            peer.stop()
    return figures


def stacks(work: Path, body_file: Path, seconds: float) -> dict:
    (work / "stack_apps.py").write_text(STACK_APPS)
    figures = {}
    for name in ("starlette_app", "fastapi_app"):
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", f"stack_apps:{name}", "--port", str(port)]
        command += ["--http", "httptools", "--log-level", "warning", "--no-access-log"]
        process = subprocess.Popen(command, cwd=work, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/v2/models/mnist/infer"
            try:
                wait_http(url, process, 30)
            except SystemExit:
                continue  # FastAPI not installed
            figures[name.removesuffix("_app")] = h1load(url, body_file, seconds, 16)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return figures


def tracing_cost(model: Path, work: Path, image, seconds: float) -> dict:
    sink = Sink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    body = work / "grpc.bin"
    body.write_bytes(h2load_run.request_bytes(image))
    traced = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    }
    figures: dict = {}
    for round_ in range(2):  # interleaved: off, on, off, on
        for name, env in (("tracing off", {}), ("tracing on, 1% sampled", traced)):
            server: Server = servers(model, [], quick=True)[0]
            server.env = env
            server.start(work / f"trace-{round_}.log")
            try:
                result = h2load_run.run(server.port, body, seconds, 16, 4, work / "h2load.log")
            finally:
                server.stop()
            figures.setdefault(name, []).append(result["requests_per_s"])
    sink.shutdown()
    return {name: max(values) for name, values in figures.items()}


def _table(caption: str, columns: tuple[str, str], rates: dict[str, float]) -> list[str]:
    return [caption, "", f"| {columns[0]} | {columns[1]} |", "|---|---|"] + [
        f"| {name} | {rate:,.0f} |" for name, rate in rates.items()
    ]


def write_docs(docs: Path, figures: dict) -> None:
    def rates(rows: dict) -> dict[str, float]:
        return {name: row["requests_per_s"] for name, row in rows.items()}

    lines = [
        *_table(
            f"One sitting, {figures['date']}; h2load, HTTP/1.1, 16 connections, one request at a "
            "time each; the body is one image as a v2 JSON tensor (784 values).",
            ("server", "REST single-image calls/s"),
            rates(figures["rest"]),
        ),
        "",
        *_table(
            "The ASGI stack alone (the same JSON parse and answer, no model, uvicorn + httptools):",
            ("framework", "calls/s"),
            rates(figures["stacks"]),
        ),
        "",
        *_table(
            "Tracing (gRPC ModelInfer, h2load 16 connections × 4 streams, the better of two "
            "interleaved runs):",
            ("mnist-serving", "req/s"),
            figures["tracing"],
        ),
    ]
    write_block(docs, "rest-bench", "## REST and tracing (`bench/rest_bench.py`)", "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--docs", type=Path)
    args = parser.parse_args()
    model = Path(model_repository.published_model(HERE.parent / "models", MODEL_NAME))
    mnist = load_mnist()
    image, label = mnist.x_test[0], int(mnist.y_test[0])
    body = json.dumps(
        {"inputs": [{"name": "image", "shape": [1, 28, 28], "datatype": "UINT8", "data": image.tolist()}]}
    ).encode()
    figures: dict = {"date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "body.json").write_bytes(body)
        figures["rest"] = rest_peers(model, work, work / "body.json", body, label, args.seconds)
        print(json.dumps(figures["rest"]), flush=True)
        figures["stacks"] = stacks(work, work / "body.json", args.seconds)
        print(json.dumps(figures["stacks"]), flush=True)
        figures["tracing"] = tracing_cost(model, work, image, args.seconds)
        print(json.dumps(figures["tracing"]), flush=True)
    if args.docs:
        write_docs(args.docs, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
