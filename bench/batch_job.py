"""`mnist-classify` jobs end to end against plain decoding and in-process onnxruntime.

    python bench/batch_job.py [--server 127.0.0.1:50051] [--docs docs/batch.md]

One sitting, the same files for every row: 10,000 28×28 PNGs (MNIST test digits as people
save them, dark ink on white; MNIST's own bright-on-black PNGs are their own row), 2,000
400×400 JPEG scans, and the 10,000 test images as a .npy. Plain decoding is Pillow open +
convert to L at full size on all cores; the ceiling for arrays is in-process onnxruntime
(one thread, batches of 256). Each job runs as a user would run it (the CLI, CSV to a file).
Then the local engine against Ray Data (a local Ray) on the same files, and throughput
against decode workers; ``--docs`` writes the figures and a plot into docs/batch.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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


def _run(args: list[str], server: str) -> tuple[str, float]:
    """One CLI job as a user runs it (CSV to a file): its stderr, and seconds from process
    start to exit (imports and pool start-up included)."""
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
        raise SystemExit(done.stderr[-3000:])
    return done.stderr, seconds


def job(args: list[str], server: str, count: int) -> tuple[float, float]:
    """Images per second of one CLI job: as its summary reports it (from its first input to
    its last row), and from process start to exit."""
    stderr, seconds = _run(args, server)
    reported = float(re.search(r"\(([\d,]+) images/s\)", stderr).group(1).replace(",", ""))
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


def steady(inputs: list[str], flags: list[str], server: str, count: int, repeat: int = 4) -> float | None:
    """Images per second once a job is running: the inputs once and ``repeat`` times (the same
    files listed again), so a job's fixed start-up (a local Ray: seconds) cancels out. None
    when the start-up's own spread swamps the difference (the longer job was not longer)."""
    _, once = job_seconds([*inputs, *flags], server)
    _, many = job_seconds([*(inputs * repeat), *flags], server)
    if many - once < 0.1 * once:
        return None
    return count * (repeat - 1) / (many - once)


def job_seconds(args: list[str], server: str) -> tuple[float, float]:
    """(rows, seconds from process start to exit) of one CLI job."""
    stderr, seconds = _run(args, server)
    return float(re.search(r"^(\d+) rows written", stderr, re.M).group(1)), seconds


def engines(root: Path, server: str, model_dir: Path, counts: dict[str, int]) -> dict:
    """The local engine against Ray (a local Ray, both through the server and offline), and
    throughput against decode workers: steady-state rates, the same files for every row."""
    out: dict = {"engines": {}, "decode_workers": {}}
    for name, inputs in (("small PNGs", [str(root / "pngs")]), ("JPEG scans", [str(root / "scans")])):
        for engine in ("local", "ray"):
            for where, extra in (("server", []), ("offline", ["--model-repository", str(model_dir)])):
                rate = steady(inputs, ["--engine", engine, *extra], server, counts[name])
                out["engines"][f"{name} | {engine} | {where}"] = rate
                print(f"{name}, {engine} engine, {where}: {_rate(rate)} images/s (steady)", flush=True)
    for engine in ("local", "ray"):
        for workers in (1, 2, 4):
            flags = ["--engine", engine, "--decode-workers", str(workers)]
            rate = steady([str(root / "scans")], flags, server, counts["JPEG scans"])
            out["decode_workers"][f"{engine} | {workers}"] = rate
            print(f"JPEG scans, {engine} engine, {workers} decode workers: {_rate(rate)}/s", flush=True)
    return out


def _rate(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:,.0f}"


def plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(figures["engines"])
    left.barh(range(len(labels)), [figures["engines"][k] or 0 for k in labels], color="#4c72b0")
    left.set_yticks(range(len(labels)), [k.replace(" | ", ", ") for k in labels], fontsize=8)
    left.set_xlabel("images/s (steady state)")
    left.set_title("local engine vs Ray Data (local Ray)")
    for engine, colour in (("local", "#4c72b0"), ("ray", "#dd8452")):
        points = sorted(
            (int(k.split(" | ")[1]), v)
            for k, v in figures["decode_workers"].items()
            if k.startswith(engine) and v is not None
        )
        right.plot([w for w, _ in points], [v for _, v in points], "o-", color=colour, label=engine)
    right.set_xlabel("decode workers (processes, or Ray tasks)")
    right.set_ylabel("images/s, 400×400 JPEG scans")
    right.set_title(f"throughput against decode workers ({os.cpu_count()} cores)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_docs(docs: Path, figures: dict) -> None:
    """The generated part of docs/batch.md, between its markers."""
    table = ["| input | job | reference | ratio | target |", "|---|---|---|---|---|"]
    targets = {"10,000 small PNGs, dark on white": 0.40, "2,000 400×400 JPEG scans": 0.60}
    for name, row in figures["targets"].items():
        target = targets.get(name, 0.50)
        verdict = "met" if row["ratio"] >= target else "missed"
        table.append(
            f"| {name} | {row['images_per_s']:,.0f}/s ({row['wall_images_per_s']:,.0f}/s) | "
            f"{row['reference']:,.0f}/s | {row['ratio']:.0%} | ≥ {target:.0%}: {verdict} |"
        )
    engines_table = ["| input | engine | classified by | images/s (steady) |", "|---|---|---|---|"]
    for key, rate in figures["engines"].items():
        name, engine, where = key.split(" | ")
        engines_table.append(f"| {name} | {engine} | {where} | {_rate(rate)} |")
    workers_table = ["| engine | decode workers | scans/s (steady) |", "|---|---|---|"]
    for key, rate in figures["decode_workers"].items():
        engine, workers = key.split(" | ")
        workers_table.append(f"| {engine} | {workers} | {_rate(rate)} |")
    body = "\n".join(
        [
            f"One sitting, {figures['date']}, {os.cpu_count()} cores; the server (default flags) and "
            "the job on the same machine. The job's rate as its summary reports it, and in brackets "
            "from process start to exit; references on all cores:",
            "",
            *table,
            "",
            "Engines, steady state (the inputs listed once and four times; the difference is the "
            "rate once a job runs, so Ray's start-up cancels out; — where the start-up's spread "
            "swamped it):",
            "",
            *engines_table,
            "",
            *workers_table,
            "",
            "![local engine and Ray Data; throughput against decode workers](batch-throughput.png)",
        ]
    )
    text = docs.read_text()
    begin, end = "<!-- batch-bench:begin -->", "<!-- batch-bench:end -->"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    docs.write_text(f"{head}{begin}\n{body}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", help="HOST:PORT of a running server (default: start mnist-serve)")
    parser.add_argument("--model", help="model.onnx for the in-process ceiling (default: newest published)")
    parser.add_argument("--docs", type=Path, help="write figures and plot into docs/batch.md")
    args = parser.parse_args()
    model = Path(args.model or model_repository.published_model(HERE.parent / "models", MODEL_NAME))
    mnist = load_mnist()
    figures: dict = {"date": time.strftime("%Y-%m-%d"), "targets": {}}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        server = args.server
        if server is None:
            from run import servers

            own = servers(model, [], quick=True)[0]
            own.start(Path(tmp) / "server.log")
            stack.callback(own.stop)
            server = f"127.0.0.1:{own.port}"
        root = Path(tmp)
        pngs, jpgs = root / "pngs", root / "scans"
        pngs.mkdir()
        jpgs.mkdir()
        bright = root / "mnist-pngs"
        bright.mkdir()
        small = []
        for i, digit in enumerate(mnist.x_test):
            buffer = io.BytesIO()
            Image.fromarray(255 - digit).save(buffer, "PNG")  # dark on white, as people save digits
            small.append(buffer.getvalue())
            (pngs / f"{i:05d}.png").write_bytes(small[-1])
            Image.fromarray(digit).save(bright / f"{i:05d}.png")  # MNIST's own format: passed through
        big = scans(2000)
        for i, blob in enumerate(big):
            (jpgs / f"{i:05d}.jpg").write_bytes(blob)
        np.save(root / "test.npy", mnist.x_test)
        rows = (
            ("10,000 small PNGs, dark on white", [str(pngs)], len(small), plain_rate(small, None)),
            (
                "10,000 small PNGs, MNIST's bright on black (passed through)",
                [str(bright)],
                len(small),
                plain_rate(small, None),
            ),
            ("2,000 400×400 JPEG scans", [str(jpgs)], len(big), plain_rate(big, None)),
            (
                "arrays: .npy of the 10,000 test images",
                [str(root / "test.npy")],
                10000,
                ceiling(str(model), mnist.x_test),
            ),
            ("arrays: --mnist-test", ["--mnist-test"], 10000, None),
        )
        for name, inputs, count, reference in rows:
            rate, wall = job(inputs, server, count)
            reference = reference or figures["targets"]["arrays: .npy of the 10,000 test images"]["reference"]
            figures["targets"][name] = {
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
        model_dir = model.parent.parent.parent
        figures.update(engines(root, server, model_dir, {"small PNGs": len(small), "JPEG scans": len(big)}))
    print(json.dumps(figures))
    if args.docs:
        plot(figures, args.docs.parent / "batch-throughput.png")
        write_docs(args.docs, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
