"""h2load against a v2 ModelInfer endpoint: one pre-framed request, replayed; near-free load.

h2load counts HTTP 200 as success even when the gRPC status in the trailers is an error,
so the same request is also sent once through a real gRPC client and its answer checked.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from mnist_serving.common.contract import MODEL_NAME
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2

PATH = "/inference.GRPCInferenceService/ModelInfer"
MISSING = "h2load is not installed (Debian: nghttp2-client)"


def require(rows: str) -> None:
    """Stop before the first round, not minutes into a sitting, when h2load is missing."""
    if shutil.which("h2load") is None:
        raise SystemExit(f"{MISSING}; {rows} need it")


def request_bytes(image: np.ndarray) -> bytes:
    """A gRPC-framed ModelInferRequest: 0 (uncompressed), 4-byte big-endian length, message."""
    request = v2.ModelInferRequest(model_name=MODEL_NAME, raw_input_contents=[image.tobytes()])
    request.inputs.add(name="image", datatype="UINT8", shape=[1, 28, 28])
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load(
    url: str,
    body: Path,
    seconds: float,
    connections: int,
    streams: int,
    headers: tuple[str, ...],
    extra: tuple[str, ...] = (),
) -> tuple[float, list[int] | None]:
    """POST ``body`` for ``seconds`` after a warm-up as long, at most 1 s (every connection
    opens in milliseconds): (requests/s, the counts of 2xx, 3xx, 4xx and 5xx answers, or
    None when h2load printed none)."""
    command = [
        shutil.which("h2load") or "h2load",
        *extra,
        "-D",
        f"{max(1, round(seconds * 1000))}ms",
        "--warm-up-time",
        f"{max(1, round(min(seconds, 1.0) * 1000))}ms",
        "-c",
        str(connections),
        "-m",
        str(streams),
        *[arg for header in headers for arg in ("-H", header)],
        "-d",
        str(body),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = done.stdout
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not rps or float(rps.group(1)) == 0:  # a reading of nothing: say what h2load saw, and why
        tail = "\n".join((out + done.stderr).strip().splitlines()[-12:])
        print(f"h2load completed no request (exit {done.returncode}): {' '.join(command)}", file=sys.stderr)
        print(tail, file=sys.stderr)
    return float(rps.group(1)) if rps else 0.0, [int(g) for g in status.groups()] if status else None


def run(port: int, body: Path, seconds: float, connections: int, streams: int, log: Path) -> dict:
    if shutil.which("h2load") is None:
        return {"error": MISSING}
    log.unlink(missing_ok=True)  # h2load appends: a reused log would mix in an earlier run's times
    rps, codes = h2load(
        f"http://127.0.0.1:{port}{PATH}",
        body,
        seconds,
        connections,
        streams,
        ("content-type: application/grpc", "te: trailers"),
        ("--log-file", str(log)),
    )
    result = {
        "requests_per_s": rps,
        "http_2xx": codes[0] if codes else 0,
        "http_errors": codes[2] + codes[3] if codes else 0,  # 4xx, 5xx
    }
    times = []
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "200":
                times.append(int(parts[2]) / 1000.0)  # microseconds → ms
    if times:
        ms = np.array(times)
        result.update(
            mean_ms=float(ms.mean()),
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
        )
    return result
