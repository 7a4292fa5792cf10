"""Closed-loop load over the KServe v2 API with Triton's own asyncio client.

Runs in its own process (tritonclient's protobuf symbols clash with the server's).
Usage: python loadgen_v2.py ADDRESS CONCURRENCY BATCH SECONDS IMAGES.npy LABELS.npy
Prints one JSON object: requests, images, errors, wrong answers, latency percentiles.
"""

import asyncio
import json
import sys
import time

import numpy as np
import tritonclient.grpc.aio as triton
from stats import summary
from tritonclient.grpc import InferInput, InferRequestedOutput

from mnist_serving.common.contract import MODEL_NAME


async def main() -> None:
    address, concurrency, batch, seconds, images_path, labels_path = sys.argv[1:7]
    concurrency, batch, seconds = int(concurrency), int(batch), float(seconds)
    images, expected = np.load(images_path), np.load(labels_path)
    client = triton.InferenceServerClient(address)
    latencies: list[float] = []
    counts = {"requests": 0, "images": 0, "errors": 0, "wrong": 0}
    stop_at = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        i = seed * 997
        while time.perf_counter() < stop_at:
            start = (i * batch) % (len(images) - batch + 1)
            x = InferInput("image", [batch, 28, 28], "UINT8")
            x.set_data_from_numpy(images[start : start + batch])
            t = time.perf_counter()
            try:
                result = await client.infer(MODEL_NAME, [x], outputs=[InferRequestedOutput("label")])
                labels = result.as_numpy("label").reshape(-1)
                counts["wrong"] += int((labels != expected[start : start + batch]).sum())
            except Exception:
                counts["errors"] += 1
            latencies.append(time.perf_counter() - t)
            counts["requests"] += 1
            counts["images"] += batch
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    print(json.dumps(summary(latencies, counts, elapsed)))


if __name__ == "__main__":
    asyncio.run(main())
