"""The in-process ceiling: onnxruntime on the published model, no server, no network."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from mnist_serving.common.contract import INPUT

BATCHES = (1, 8, 64, 256, 1024)


def measure(model_path: str, threads: int = 0, batches=BATCHES, seconds: float = 1.0) -> list[dict]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        images = rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8)
        for _ in range(5):
            session.run(None, {INPUT.name: images})
        runs, cpu, started = 0, time.process_time(), time.perf_counter()
        latencies = []
        while time.perf_counter() - started < seconds:
            t = time.perf_counter()
            session.run(None, {INPUT.name: images})
            latencies.append(time.perf_counter() - t)
            runs += 1
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        rows.append(
            {
                "batch": batch,
                "threads": threads,
                "images_per_s": runs * batch / elapsed,
                "p50_ms": float(np.percentile(latencies, 50) * 1e3),
                "cpu_ms": cpu / runs * 1e3,  # all of onnxruntime's threads, per run
            }
        )
    return rows


if __name__ == "__main__":
    import sys

    for row in measure(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0):
        print(row)
