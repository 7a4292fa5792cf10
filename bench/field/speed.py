"""Preprocessing speed against plain decoding, on the same files, all cores, one sitting.

    python bench/field/speed.py [--data bench/field/data]

Plain decoding is what any consumer of the files must pay at least: Pillow open + convert to
L at full size. Rows: the field set's 480×360 photos, and 28×28 PNGs of MNIST test digits as
they are (bright on black: passed through) and inverted (dark on light: the whole pipeline).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import sys
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import legacy  # noqa: E402
from decode_pool import _plain  # noqa: E402  (plain decoding, as every benchmark measures it)

from mnist_serving.common import preprocess  # noqa: E402
from mnist_serving.common.mnist_data import load_mnist  # noqa: E402


def _v1(blobs: list[bytes]) -> int:
    for blob in blobs:
        legacy.decode(blob)
    return len(blobs)


def _v2(blobs: list[bytes]) -> int:
    for blob in blobs:
        preprocess.decode(blob)
    return len(blobs)


def rate(function: object, blobs: list[bytes], rounds: int = 3) -> float:
    """Best of ``rounds`` passes, images/s, one process per core."""
    chunks = [blobs[i : i + 32] for i in range(0, len(blobs), 32)]
    best = 0.0
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(function, chunks[: os.cpu_count()]))
        for _ in range(rounds):
            started = time.perf_counter()
            done = sum(pool.map(function, chunks))
            best = max(best, done / (time.perf_counter() - started))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / "data")
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted((args.data / "photo").glob("*.jpg"))]
    small, inverted = [], []
    for digit in load_mnist().x_test[:5000]:
        for pixels, out in ((digit, small), (255 - digit, inverted)):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            out.append(buffer.getvalue())
    figures = {}
    for name, blobs in (
        ("480x360 JPEG photos", photos),
        ("28x28 PNGs, MNIST's format", small),
        ("28x28 PNGs, dark on light", inverted),
    ):
        plain, v1, v2 = rate(_plain, blobs), rate(_v1, blobs), rate(_v2, blobs)
        figures[name] = {"plain": plain, "v1": v1, "v2": v2}
        print(
            f"{name}: plain decoding {plain:,.0f}/s; preprocessing v1 {v1:,.0f}/s; "
            f"v2 {v2:,.0f}/s = {v2 / plain:.0%} of plain, {v2 / v1:.0%} of v1",
            flush=True,
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
