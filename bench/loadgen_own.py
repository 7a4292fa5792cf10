"""Closed-loop load over mnist-serving's own API with the project's AsyncClient."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from stats import summary

from mnist_serving.client import AsyncClient
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb


async def closed_loop(
    address: str, concurrency: int, batch: int, seconds: float, images: np.ndarray, expected: np.ndarray
) -> dict:
    """``batch`` 1 uses Classify; larger batches use ClassifyBatch with packed raw pixels."""
    counts = {"requests": 0, "images": 0, "errors": 0, "wrong": 0}
    latencies: list[float] = []
    async with AsyncClient(address, retries=0) as client:
        stub = client.stub
        stop_at = time.perf_counter() + seconds

        async def worker(seed: int) -> None:
            i = seed * 997
            while time.perf_counter() < stop_at:
                start = (i * batch) % (len(images) - batch + 1)
                part = images[start : start + batch]
                t = time.perf_counter()
                try:
                    if batch == 1:
                        r = await stub.Classify(pb.ClassifyRequest(image=pb.Image(raw=part.tobytes())))
                        labels = np.array([r.prediction.label])
                    else:
                        r = await stub.ClassifyBatch(
                            pb.ClassifyBatchRequest(raw=pb.RawBatch(data=part.tobytes(), count=batch))
                        )
                        labels = np.frombuffer(r.labels, np.uint8)
                    counts["wrong"] += int((labels != expected[start : start + batch]).sum())
                except Exception:
                    counts["errors"] += 1
                latencies.append(time.perf_counter() - t)
                counts["requests"] += 1
                counts["images"] += batch
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(s) for s in range(concurrency)))
        return summary(latencies, counts, time.perf_counter() - started)


async def stream_test_set(address: str, images: np.ndarray, expected: np.ndarray, chunk: int = 1000) -> dict:
    """The whole test set through one ClassifyStream, in order."""
    async with AsyncClient(address, retries=0) as client:

        def requests():
            for start in range(0, len(images), chunk):
                part = images[start : start + chunk]
                yield pb.ClassifyBatchRequest(raw=pb.RawBatch(data=part.tobytes(), count=len(part)))

        started = time.perf_counter()
        labels = [np.frombuffer(r.labels, np.uint8) async for r in client.stub.ClassifyStream(requests())]
        elapsed = time.perf_counter() - started
    got = np.concatenate(labels)
    return {
        "requests": 1,
        "images": len(got),
        "errors": 0,
        "wrong": int((got != expected).sum()),
        "seconds": elapsed,
        "images_per_s": len(got) / elapsed,
    }


if __name__ == "__main__":
    import json
    import sys

    address, concurrency, batch, seconds, images_path, labels_path = sys.argv[1:7]
    result = asyncio.run(
        closed_loop(
            address, int(concurrency), int(batch), float(seconds), np.load(images_path), np.load(labels_path)
        )
    )
    print(json.dumps(result))
