"""`mnist-classify` jobs end to end against plain decoding and in-process onnxruntime.

    python bench/batch_job.py --server 127.0.0.1:50051 [--model models/mnist/1/model.onnx]

One sitting, the same files for every row: 10,000 28×28 PNGs (MNIST test digits), 2,000
400×400 JPEG scans, and the 10,000 test images as a .npy. Plain decoding is Pillow open +
convert to L at full size on all cores; the ceiling for arrays is in-process onnxruntime
(one thread, batches of 256). Each job runs as a user would run it (the CLI, CSV to a file).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from decode_pool import plain_rate, scans  # noqa: E402

from mnist_serving.common import model_repository  # noqa: E402
from mnist_serving.common.contract import MODEL_NAME  # noqa: E402
from mnist_serving.common.mnist_data import load_mnist  # noqa: E402

EXE = str(Path(sys.executable).parent / "mnist-classify")


def job(args: list[str], server: str, count: int) -> tuple[float, float]:
    """Images per second of one CLI job: as its summary reports it (from its first input to
    its last row), and from process start to exit (imports and pool start-up included)."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        done = subprocess.run(
            [EXE, "--no-progress", *args, "--server", server, "-o", f"{out}/rows.csv"],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode not in (0, 3):
            raise SystemExit(done.stderr)
    reported = float(re.search(r"\(([\d,]+) images/s\)", done.stderr).group(1).replace(",", ""))
    return reported, count / seconds


def ceiling(model: str, images: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session.run(None, {"image": images[:256]})
    started = time.perf_counter()
    for start in range(0, len(images), 256):
        session.run(None, {"image": images[start : start + 256]})
    return len(images) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", help="model.onnx for the in-process ceiling (default: newest published)")
    args = parser.parse_args()
    model = args.model or str(model_repository.published_model(HERE.parent / "models", MODEL_NAME))
    mnist = load_mnist()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pngs, jpgs = root / "pngs", root / "scans"
        pngs.mkdir()
        jpgs.mkdir()
        small = []
        for i, digit in enumerate(mnist.x_test):
            buffer = io.BytesIO()
            Image.fromarray(digit).save(buffer, "PNG")
            small.append(buffer.getvalue())
            (pngs / f"{i:05d}.png").write_bytes(small[-1])
        big = scans(2000)
        for i, blob in enumerate(big):
            (jpgs / f"{i:05d}.jpg").write_bytes(blob)
        np.save(root / "test.npy", mnist.x_test)
        rows = (
            ("10,000 small PNGs", [str(pngs)], len(small), plain_rate(small, None)),
            ("2,000 400×400 JPEG scans", [str(jpgs)], len(big), plain_rate(big, None)),
            (
                "arrays: .npy of the 10,000 test images",
                [str(root / "test.npy")],
                10000,
                ceiling(model, mnist.x_test),
            ),
            ("arrays: --mnist-test", ["--mnist-test"], 10000, None),
        )
        for name, inputs, count, reference in rows:
            rate, wall = job(inputs, args.server, count)
            reference = reference or figures["arrays: .npy of the 10,000 test images"]["reference"]
            figures[name] = {
                "images_per_s": rate,
                "wall_images_per_s": wall,
                "reference": reference,
                "ratio": rate / reference,
            }
            print(
                f"{name}: {rate:,.0f} images/s = {rate / reference:.0%} of {reference:,.0f} "
                f"(process start to exit: {wall:,.0f}/s)",
                flush=True,
            )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
