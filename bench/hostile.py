"""Hostile callers against a server started as compose starts it (`--decode-workers 1`), one
sitting; the figures go into docs/reliability.md.

    python bench/hostile.py [--docs docs/reliability.md]

1. a 64 MB JSON body announced by Content-Length: the time to its 413;
2. chunked JSON bodies just under the 16 MiB limit: the growth of the server's process tree
   (peak RSS over the body's size) and gRPC health latency while they arrive;
3. 200 connections that never finish their headers: when the server closes them;
4. a scan bomb (a progressive JPEG repeating one AC scan 2,000 times, 125 KB, seconds to
   decode), then a small PNG 0.3 s later: when each is answered;
5. kill -9 of every decode process: the time until an encoded image is answered again, then
   100 more calls;
6. a new model version published under encoded load: failed calls.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from docs_block import write_block  # noqa: E402

from mnist_serving.common import model_repository  # noqa: E402
from mnist_serving.common.contract import MODEL_NAME  # noqa: E402
from mnist_serving.common.mnist_data import load_mnist  # noqa: E402
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb  # noqa: E402
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402
from tests.process_tree import descendants  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402


def tree_rss(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def scan_bomb(repeats: int = 2000) -> bytes:
    """A 4000×4000 progressive JPEG of a page and a stroke, one of its AC scans repeated."""
    page = np.full((4000, 4000), 230, np.uint8)
    page[1000:3000, 1800:2200] = 20
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, "JPEG", progressive=True, quality=90)
    data, i, scans = buffer.getvalue(), 2, []
    while data[i + 1] != 0xD9:
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
            scans.append((i, end))
        i = end
    start, stop = min(scans[1:], key=lambda s: s[1] - s[0])
    last = scans[-1][1]
    return data[:last] + data[start:stop] * repeats + data[last:]


def post_chunked(port: int, body: bytes, piece: int = 1 << 20) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for start in range(0, len(body), piece):
            part = body[start : start + piece]
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        answer = sock.recv(65536)
    return int(answer.split(b" ", 2)[1])


def health_probe(address: str, stop: threading.Event, out: list[float]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            started = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            out.append((time.perf_counter() - started) * 1e3)
            time.sleep(0.01)


def sitting(repository: Path, mnist) -> dict:
    figures: dict = {}
    server = ServerProcess(repository, "--decode-workers", "1", "--poll-interval", "0.5")
    try:
        server.wait_serving()
        # 1. 64 MB announced
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=60) as sock:
            started = time.perf_counter()
            head = f"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {64 << 20}\r\n\r\n"  # noqa: E501
            sock.sendall(head.encode())
            status = sock.recv(4096).split(b" ", 2)[1].decode()
            figures["64 MB body"] = f"{status} after {(time.perf_counter() - started) * 1e3:.1f} ms"
        # 2. chunked bodies just under the limit, health probed meanwhile
        images = np.tile(mnist.x_test[:100], (50, 1, 1))  # 5,000 images
        tensor = {
            "name": "image",
            "shape": [len(images), 28, 28],
            "datatype": "UINT8",
            "data": images.tolist(),
        }
        body = json.dumps({"inputs": [tensor]}).encode()
        latencies: list[float] = []
        stop = threading.Event()
        probe = threading.Thread(target=health_probe, args=(server.address, stop, latencies))
        tree = [server.process.pid, *descendants(server.process.pid)]
        before, peak = tree_rss(tree), 0
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.is_set():
                peak = max(peak, tree_rss(tree))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        probe.start()
        sampler.start()
        statuses = [post_chunked(server.http_port, body) for _ in range(3)]
        stop.set()
        sampling.set()
        probe.join()
        sampler.join()
        p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
        figures["chunked body under the limit"] = (
            f"{len(body) / 2**20:.1f} MiB × 3, answers {statuses}; process tree peak growth "
            f"{(peak - before) / 2**20:.0f} MiB = {(peak - before) / len(body):.1f}× the body; "
            f"gRPC health p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms, "
            f"max {max(latencies):.1f} ms ({len(latencies)} checks)"
        )
        # 3. 200 header-less connections (default head timeout: 10 s)
        sockets = [socket.create_connection(("127.0.0.1", server.http_port), timeout=60) for _ in range(200)]
        opened = time.perf_counter()
        closed = []
        for sock in sockets:
            while sock.recv(4096):
                pass
            closed.append(time.perf_counter() - opened)
            sock.close()
        figures["200 header-less connections"] = f"all closed after {max(closed):.2f} s (head timeout 10 s)"
        # 4. the scan bomb, then a small image behind it
        bomb, small = scan_bomb(), png(255 - mnist.x_test[0])
        results: dict = {}
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ClassifierStub(channel)

            def call(name: str, blob: bytes) -> None:
                started = time.perf_counter()
                response = stub.ClassifyBatch(
                    pb.ClassifyBatchRequest(images=[pb.Image(encoded=blob)]), timeout=60
                )
                code = response.errors[0].code if response.errors else "OK"
                results[name] = (code, time.perf_counter() - started)

            first = threading.Thread(target=call, args=("bomb", bomb))
            first.start()
            time.sleep(0.3)
            call("small", small)
            first.join()
        figures["scan bomb"] = (
            f"{len(bomb) / 1024:.0f} KiB: {results['bomb'][0]} after {results['bomb'][1]:.2f} s "
            f"(budget 0.5 s); a small PNG sent 0.3 s later: {results['small'][0]} after "
            f"{results['small'][1]:.2f} s"
        )
        # 5. kill -9 of every decode process
        request = pb.ClassifyBatchRequest(images=[pb.Image(encoded=small)] * 10)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            for pid in descendants(server.process.pid):
                os.kill(pid, signal.SIGKILL)
            started = time.perf_counter()
            response = stub.ClassifyBatch(request, timeout=60)
            healed = time.perf_counter() - started
            failed = int(bool(response.errors)) + sum(
                bool(stub.ClassifyBatch(request, timeout=60).errors) for _ in range(100)
            )
        figures["kill -9 of every decode process"] = (
            f"first call answered after {healed:.2f} s; then {failed} of 100 calls failed"
        )
        # 6. a reload under encoded load
        figures["reload under encoded load"] = reload_under_load(server, repository, mnist)
    finally:
        server.stop()
    return figures


def reload_under_load(server: ServerProcess, repository: Path, mnist) -> str:
    blobs = [png(255 - d) for d in mnist.x_test[:30]]
    request = pb.ClassifyBatchRequest(images=[pb.Image(encoded=b) for b in blobs])
    stop, counts, lock = threading.Event(), {"ok": 0, "failed": 0}, threading.Lock()

    def caller() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            while not stop.is_set():
                try:
                    response = stub.ClassifyBatch(request, timeout=60)
                    good = not response.errors
                except grpc.RpcError:
                    good = False
                with lock:
                    counts["ok" if good else "failed"] += 1

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    newest = max(model_repository.list_versions(repository, MODEL_NAME))
    shutil.copytree(repository / MODEL_NAME / str(newest), repository / MODEL_NAME / ".staging-bench")
    (repository / MODEL_NAME / ".staging-bench").rename(repository / MODEL_NAME / str(newest + 1))
    deadline = time.monotonic() + 60
    while "replacing version" not in (server.log_text() or "") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    return (
        f"3 callers of 30 encoded images; version {newest + 1} published; "
        f"{counts['ok']} calls answered, {counts['failed']} failed"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path)
    args = parser.parse_args()
    model = model_repository.published_model(ROOT / "models", MODEL_NAME)
    if model is None:
        raise SystemExit("no published model: run `make run` first")
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    repository = work / "models"
    shutil.copytree(Path(model).resolve().parent.parent.parent, repository)
    figures = sitting(repository, load_mnist())
    lines = ["| case | figure |", "|---|---|"] + [f"| {k} | {v} |" for k, v in figures.items()]
    text = "\n".join(lines)
    print(text)
    if args.docs:
        write_block(args.docs, "hostile", "## Hostile callers: one sitting (`bench/hostile.py`)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
