"""Heavy-batch scenario: one caller loops batches of 2,000 encoded scans while other callers
run health checks and single-image calls; what matters is the others' p99.

    python bench/heavy_batch.py --server 127.0.0.1:50051 [--seconds 20]

A liveness probe with a 1 s timeout, or a service calling in beside a batch job, sees the
latencies reported here. Scans are MNIST test digits as 400x400 JPEGs (bench/decode_pool.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_pool import scans  # noqa: E402

from mnist_serving.common.mnist_data import load_mnist  # noqa: E402
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb  # noqa: E402
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


PERIOD_S = 0.02  # each light caller starts a call every 20 ms (or when its last one ends)


async def _heavy(address: str, request: pb.ClassifyBatchRequest, stop: float, out: list) -> None:
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as ch:
        stub = pb_grpc.ClassifierStub(ch)
        while time.monotonic() < stop:
            started = time.perf_counter()
            response = await stub.ClassifyBatch(request, timeout=120)
            out.append((time.perf_counter() - started, response.count, len(response.errors)))


async def _light(address: str, kind: str, stop: float, out: list, image: bytes) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        classifier = pb_grpc.ClassifierStub(channel)
        single = pb.ClassifyRequest(image=pb.Image(raw=image))
        while time.monotonic() < stop:
            started = time.perf_counter()
            if kind == "health":
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            else:
                await classifier.Classify(single, timeout=10)
            elapsed = time.perf_counter() - started
            out.append(elapsed * 1000)
            await asyncio.sleep(max(0.0, PERIOD_S - elapsed))


async def scenario(address: str, seconds: float, count: int = 2000) -> dict:
    blobs = scans(count)
    request = pb.ClassifyBatchRequest(images=[pb.Image(encoded=b) for b in blobs])
    image = load_mnist().x_test[0].tobytes()
    heavy: list = []
    health: list[float] = []
    single: list[float] = []
    stop = time.monotonic() + seconds
    await asyncio.gather(
        _heavy(address, request, stop, heavy),
        _light(address, "health", stop, health, image),
        _light(address, "single", stop, single, image),
    )
    return {
        "scans_per_batch": count,
        "batches": len(heavy),
        "batch_seconds_p50": percentile([h[0] for h in heavy], 50) if heavy else None,
        "scans_per_s": sum(h[1] for h in heavy) / sum(h[0] for h in heavy) if heavy else None,
        "item_errors": sum(h[2] for h in heavy),
        "health_calls": len(health),
        "health_p50_ms": percentile(health, 50),
        "health_p99_ms": percentile(health, 99),
        "health_max_ms": max(health),
        "single_calls": len(single),
        "single_p50_ms": percentile(single, 50),
        "single_p99_ms": percentile(single, 99),
        "single_max_ms": max(single),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", required=True)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--scans", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(scenario(args.server, args.seconds, args.scans)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
