"""The preprocessing and batch targets, in one sitting of interleaved rounds.

    python bench/targets.py [--rounds 3] [--seconds 3] [--docs docs/benchmarks.md]

Every round measures each row and its reference seconds apart, and the ratio is taken within
the round; the report reads the median round. Inputs are digits as people save them: MNIST
test digits as 28×28 PNGs with dark ink on white (the whole pipeline runs), and 400×400 JPEG
scans; the bright-on-black PNG (MNIST's own format, passed through) is its own row.
"Plain decoding" is Pillow open + convert("L") + load at full size (bench/decode_pool.py).

Rows: ``preprocess_image`` against plain decoding on one core (one process, one thread);
``mnist-classify DIR`` against plain decoding on all cores, the server (default flags) on
the same machine; batches of 256 through Triton's client (2 callers) against in-process
onnxruntime with its default threads; single images at 64 in flight (h2load, 16 connections
× 4 streams) against the bare gRPC floor, with one and with two processes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import ceiling  # noqa: E402
import h2load_run  # noqa: E402
from decode_pool import _plain, plain_rate, scans  # noqa: E402
from docs_block import write_block  # noqa: E402
from run import OURS, run_v2, servers, test_set_files  # noqa: E402

from mnist_serving.client import preprocess_image  # noqa: E402
from mnist_serving.common import model_repository  # noqa: E402
from mnist_serving.common.contract import MODEL_NAME  # noqa: E402

EXE = str(Path(sys.executable).parent / "mnist-classify")
TARGETS = {  # row → (reference, target ratio, hard)
    "preprocess_image, 2,000 dark-on-white 28×28 PNGs, one core": ("plain decoding, one core", 0.50),
    "preprocess_image, 2,000 400×400 JPEG scans, one core": ("plain full decoding, one core", 1.00),
    "preprocess_image, 2,000 bright-on-black 28×28 PNGs (passed through), one core": (
        "plain decoding, one core",
        None,
    ),
    "mnist-classify DIR, 10,000 dark-on-white PNGs": ("plain decoding, all cores", 0.40),
    "mnist-classify DIR, 2,000 JPEG scans": ("plain decoding, all cores", 0.60),
    "batches of 256, Triton's client, 2 callers": ("in-process onnxruntime, default threads", 0.70),
    "single images, 64 in flight": ("floor, 1 process", 0.95),
    "single images, 64 in flight, --workers 2": ("floor, 2 processes", 0.85),
}


def one_core_rate(function, blobs: list[bytes], seconds: float) -> float:
    """Images per second of ``function`` over ``blobs``, repeated for about ``seconds``."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for blob in blobs:
            function(blob)
        done += len(blobs)
    return done / (time.perf_counter() - started)


def job_rate(directory: Path, address: str) -> float:
    """``mnist-classify DIR`` as a user runs it (CSV to a file): the rate its summary reports."""
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [EXE, "--no-progress", str(directory), "--server", address, "-o", f"{out}/rows.csv"],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"job failed: {done.stderr[-2000:]}")
    return float(re.search(r"([\d,.]+) images/s", done.stderr).group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--docs", type=Path, help="write the table into this page (block targets-preprocessing)"
    )
    args = parser.parse_args()
    model = model_repository.published_model(ROOT / "models", MODEL_NAME)
    if model is None:
        raise SystemExit("no published model: run `make run` first")
    h2load_run.require("the single-image rows")
    model = Path(model).resolve()
    mnist, work, data, body = test_set_files(model, "bench-targets-")
    dark, bright = [], []
    for digit in mnist.x_test[:2000]:
        for images, pixels in ((dark, 255 - digit), (bright, digit)):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            images.append(buffer.getvalue())
    jpegs = scans(2000)
    pngs, jpgs = work / "pngs", work / "scans"
    pngs.mkdir()
    jpgs.mkdir()
    for i, digit in enumerate(mnist.x_test):
        Image.fromarray(255 - digit).save(pngs / f"{i:05d}.png")
    for i, blob in enumerate(jpegs):
        (jpgs / f"{i:05d}.jpg").write_bytes(blob)
    wanted = (OURS, f"{OURS} (2 workers)", "floor (1 process)", "floor (2 processes)")
    chosen = [s for s in servers(model, []) if s.name in wanted]
    by_name = {s.name: s for s in chosen}
    rounds = []
    try:
        for server in chosen:
            server.start(work / f"{server.port}.log")
        ours = f"127.0.0.1:{by_name[OURS].port}"
        for number in range(1, args.rounds + 1):
            row: dict = {}
            plain_small = one_core_rate(lambda b: _plain([b]), dark, args.seconds)
            row["plain decoding, one core"] = plain_small
            row[list(TARGETS)[0]] = one_core_rate(preprocess_image, dark, args.seconds)
            row[list(TARGETS)[2]] = one_core_rate(preprocess_image, bright, args.seconds)
            row["plain full decoding, one core"] = one_core_rate(lambda b: _plain([b]), jpegs, args.seconds)
            row[list(TARGETS)[1]] = one_core_rate(preprocess_image, jpegs, args.seconds)
            row["plain decoding, all cores (PNGs)"] = plain_rate(dark * 5, os.cpu_count())
            row[list(TARGETS)[3]] = job_rate(pngs, ours)
            row["plain decoding, all cores (JPEG scans)"] = plain_rate(jpegs, os.cpu_count())
            row[list(TARGETS)[4]] = job_rate(jpgs, ours)
            row["in-process onnxruntime, default threads"] = ceiling.measure(
                str(model), 0, batches=(256,), seconds=min(args.seconds, 2.0)
            )[0]["images_per_s"]
            batch = run_v2(ours, 2, 256, args.seconds, data)
            if batch.get("wrong", 0) or batch.get("errors", 0) or "error" in batch:
                raise SystemExit(f"batches of 256 had errors or wrong answers: {batch}")
            row[list(TARGETS)[5]] = batch["images_per_s"]
            for server, key in (
                (OURS, list(TARGETS)[6]),
                ("floor (1 process)", "floor, 1 process"),
                (f"{OURS} (2 workers)", list(TARGETS)[7]),
                ("floor (2 processes)", "floor, 2 processes"),
            ):
                port = by_name[server].port
                row[key] = h2load_run.run(port, body, args.seconds, 16, 4, work / "h2.log")["requests_per_s"]
            print(f"round {number}: {json.dumps(row)}", flush=True)
            rounds.append(row)
    finally:
        for server in chosen:
            server.stop()
    table = report(rounds)
    print(table)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "targets.json").write_text(json.dumps(rounds, indent=2))
    if args.docs:
        heading = "## Preprocessing and batch targets (`bench/targets.py`)"
        write_block(args.docs, "targets-preprocessing", heading, table)
    return 0


def _reference(row: dict, name: str, reference: str) -> float:
    if reference.startswith("plain decoding, all cores"):
        kind = "JPEG scans" if "JPEG" in name else "PNGs"
        return row[f"plain decoding, all cores ({kind})"]
    return row[reference]


def report(rounds: list[dict]) -> str:
    lines = [
        f"One sitting, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {len(rounds)} interleaved "
        "rounds; ratio = the row / its reference within a round; the median round is read.",
        "",
        "| what | images/s (median) | reference | reference/s (median) | ratio per round "
        "| median-round ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (reference, target) in TARGETS.items():
        ratios = [r[name] / _reference(r, name, reference) for r in rounds]
        ratio = statistics.median(ratios)
        verdict = "—" if target is None else f"≥ {target:.2f}: {'met' if ratio >= target else 'missed'}"
        lines.append(
            f"| {name} | {statistics.median(r[name] for r in rounds):,.0f} | {reference} | "
            f"{statistics.median(_reference(r, name, reference) for r in rounds):,.0f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | **{ratio:.2f}** | {verdict} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
