"""Decoding encoded images: plain Pillow against the server's decode pool (processes, threads,
inline), and how the pool scales with cores. Writes JSON; docs/benchmarks.md quotes it.
Inputs: 400×400 JPEG scans, 28×28 PNGs of digits as people save them (dark ink on white: the
whole pipeline) and, as its own row, MNIST's own bright-on-black PNGs (passed through).

    python bench/decode_pool.py [--images 2000] [--out bench/results/decode.json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_serving.common.mnist_data import load_mnist
from mnist_serving.server.decode_pool import DecodePool


def scans(count: int) -> list[bytes]:
    """MNIST test digits as 400x400 JPEG scans: dark ink on light paper."""
    digits = load_mnist().x_test[:count]
    out = []
    for digit in digits:
        page = Image.fromarray(255 - digit).resize((280, 280)).convert("L")
        canvas = Image.new("L", (400, 400), 240)
        canvas.paste(page, (60, 60))
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def digit_pngs(count: int, dark_on_white: bool = True) -> list[bytes]:
    """MNIST test digits as 28×28 PNGs: dark ink on white (as people save them), or MNIST's
    own bright ink on black (the model's format, which the pipeline passes through)."""
    out = []
    for digit in load_mnist().x_test[:count]:
        buffer = io.BytesIO()
        Image.fromarray(255 - digit if dark_on_white else digit).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def _plain(blobs: list[bytes]) -> int:
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            image.convert("L").load()
    return len(blobs)


def plain_rate(blobs: list[bytes], workers: int) -> float:
    """Pillow open + convert to L, full size, in ``workers`` processes."""
    chunks = [blobs[i : i + 16] for i in range(0, len(blobs), 16)]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_plain, chunks[:workers]))  # warm
        started = time.perf_counter()
        done = sum(pool.map(_plain, chunks))
    return done / (time.perf_counter() - started)


def pool_rate(blobs: list[bytes], workers: int, kind: str) -> float:
    pool = DecodePool(workers, pixel_budget=10**12, kind=kind)
    pool.start()
    fields = [f"images[{i}].encoded" for i in range(len(blobs))]
    try:
        asyncio.run(pool.decode(blobs[:64], fields[:64]))  # warm
        started = time.perf_counter()
        asyncio.run(pool.decode(blobs, fields))
        return len(blobs) / (time.perf_counter() - started)
    finally:
        pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decode.json")
    parser.add_argument("--inner", help=argparse.SUPPRESS)  # one measurement under taskset
    args = parser.parse_args()
    blobs = scans(args.images)
    cores = len(os.sched_getaffinity(0))
    if args.inner:
        print(json.dumps({"rate": pool_rate(blobs, cores, args.inner), "cores": cores}))
        return 0
    pngs, mnist_pngs = digit_pngs(args.images), digit_pngs(args.images, dark_on_white=False)
    results = {
        "images": len(blobs),
        "mean_bytes": int(np.mean([len(b) for b in blobs])),
        "cores": cores,
        "plain_pillow_all_cores": plain_rate(blobs, cores),
        "pool_processes_all_cores": pool_rate(blobs, cores, "process"),
        "pool_threads_all_cores": pool_rate(blobs, cores, "thread"),
        "inline_event_loop": pool_rate(blobs, 0, "process"),
        "dark_on_white_png_plain_pillow_all_cores": plain_rate(pngs, cores),
        "dark_on_white_png_pool_processes_all_cores": pool_rate(pngs, cores, "process"),
        "bright_on_black_png_passed_through_pool_processes_all_cores": pool_rate(
            mnist_pngs, cores, "process"
        ),
    }
    for cpus in ("0", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:2])):
        done = subprocess.run(
            [
                "taskset",
                "-c",
                cpus,
                sys.executable,
                __file__,
                "--images",
                str(args.images),
                "--inner",
                "process",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[f"pool_processes_taskset_{cpus}"] = json.loads(done.stdout)["rate"]
    one, two = results["pool_processes_taskset_0"], results[f"pool_processes_taskset_{cpus}"]
    results["scaling_1_to_2_cores"] = two / one
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
