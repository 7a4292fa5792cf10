"""Bounded soak: many concurrent callers mixing every API, every answer checked.

    python bench/soak.py --seconds 300 --callers 32      # `make soak` (minutes)

Used in short form by the test suite. The server under test is started here (or given by
--address); its RSS and open file descriptors are sampled from /proc during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from mnist_serving.common.contract import MODEL_NAME
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc

APIS = ("single", "batch", "stream", "v2")


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    refused: int = 0  # RESOURCE_EXHAUSTED or UNAVAILABLE: the server said no, explicitly
    lost: int = 0  # any other failure: timeouts, cancellations, internal errors
    wrong: int = 0  # answered, but not what in-process onnxruntime says
    images: int = 0
    by_api: dict = field(default_factory=lambda: {api: 0 for api in APIS})
    failures: dict = field(default_factory=dict)


def _proc_sample(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def _caller(
    address: str, api: str, stop_at: float, images: np.ndarray, expected: np.ndarray, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(address) as channel:
        own = pb_grpc.ClassifierStub(channel)
        infer = v2_grpc.GRPCInferenceServiceStub(channel)
        while time.perf_counter() < stop_at:
            n = 1 if api == "single" else rng.choice((1, 7, 64, 256, 600))
            start = rng.randrange(0, len(images) - n)
            part, want = images[start : start + n], expected[start : start + n]
            tally.sent += 1
            tally.by_api[api] += 1
            try:
                if api == "single":
                    r = await own.Classify(pb.ClassifyRequest(image=pb.Image(raw=part.tobytes())), timeout=30)
                    got = np.array([r.prediction.label])
                elif api == "batch":
                    r = await own.ClassifyBatch(
                        pb.ClassifyBatchRequest(raw=pb.RawBatch(data=part.tobytes(), count=n)), timeout=30
                    )
                    got = np.frombuffer(r.labels, np.uint8)
                elif api == "stream":
                    pieces = [part[i : i + 50] for i in range(0, n, 50)]
                    requests = [
                        pb.ClassifyBatchRequest(raw=pb.RawBatch(data=p.tobytes(), count=len(p)))
                        for p in pieces
                    ]
                    got = np.concatenate(
                        [
                            np.frombuffer(r.labels, np.uint8)
                            async for r in own.ClassifyStream(iter(requests), timeout=30)
                        ]
                    )
                else:
                    request = v2.ModelInferRequest(model_name=MODEL_NAME, raw_input_contents=[part.tobytes()])
                    request.inputs.add(name="image", datatype="UINT8", shape=[n, 28, 28])
                    request.outputs.add(name="label")
                    r = await infer.ModelInfer(request, timeout=30)
                    got = np.frombuffer(r.raw_output_contents[0], "<i8")
                tally.answered += 1
                tally.images += n
                if not np.array_equal(got, want):
                    tally.wrong += 1
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                tally.failures[code] = tally.failures.get(code, 0) + 1
                if exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    tally.refused += 1
                else:
                    tally.lost += 1


async def soak(
    address: str, pid: int | None, seconds: float, callers: int, images: np.ndarray, expected: np.ndarray
) -> dict:
    """Run the mixed load; returns the tally and the server's RSS/FD samples."""
    tally = Tally()
    stop_at = time.perf_counter() + seconds
    samples: list[tuple[float, int, int]] = []

    async def sampler() -> None:
        started = time.perf_counter()
        while time.perf_counter() < stop_at and pid is not None:
            rss, fds = _proc_sample(pid)
            samples.append((time.perf_counter() - started, rss, fds))
            await asyncio.sleep(max(0.05, seconds / 40))

    tasks = [
        _caller(address, APIS[i % len(APIS)], stop_at, images, expected, tally, i) for i in range(callers)
    ]
    started = time.perf_counter()
    await asyncio.gather(sampler(), *tasks)
    elapsed = time.perf_counter() - started
    result = {
        **asdict(tally),
        "seconds": elapsed,
        "callers": callers,
        "requests_per_s": tally.sent / elapsed,
        "images_per_s": tally.images / elapsed,
    }
    if samples:
        warm = [s for s in samples if s[0] >= 0.25 * seconds] or samples
        result.update(
            rss_warm_mb=warm[0][1] / 2**20,
            rss_end_mb=samples[-1][1] / 2**20,
            rss_max_mb=max(s[1] for s in samples) / 2**20,
            fds_warm=warm[0][2],
            fds_end=samples[-1][2],
            fds_max=max(s[2] for s in samples),
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--output", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args()
    import onnxruntime as ort

    from mnist_serving.common import model_repository
    from mnist_serving.common.mnist_data import load_mnist

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.server_process import ServerProcess

    model = model_repository.published_model(args.model_repository, MODEL_NAME)
    mnist = load_mnist()
    expected = ort.InferenceSession(str(model)).run(["label"], {"image": mnist.x_test})[0]
    server = ServerProcess(args.model_repository, "--log-level", "WARNING")
    server.wait_serving()
    try:
        result = asyncio.run(
            soak(server.address, server.process.pid, args.seconds, args.callers, mnist.x_test, expected)
        )
    finally:
        result_code = server.stop()
    result["exit_code"] = result_code
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["wrong"] == 0 and result_code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
