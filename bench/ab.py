"""A/B: this tree's server against an earlier commit's, in interleaved rounds, one sitting.

    python bench/ab.py --baseline df4c134 [--rounds 5] [--seconds 5] [--docs docs/benchmarks.md]

Both servers run at once with the same flags and the same published model; each round
measures A and B back to back on every scenario (A first in odd rounds, B first in even
ones), and each ratio (B / A) is taken within its round, so the machine's drift between
rounds cancels out; the report reads the median round.
The baseline's source is unpacked from git and imported ahead of this checkout's.

Scenarios: single images at 64 in flight (h2load, 16 connections x 4 streams, v2 ModelInfer),
batches of 256 (Triton's client, 4 callers), and REST JSON infer of 64 images a call
(h2load over HTTP/1.1, 8 connections).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import h2load_run  # noqa: E402
from docs_block import write_block  # noqa: E402
from run import Server, free_port, run_v2, test_set_files  # noqa: E402

from mnist_serving.common import model_repository  # noqa: E402
from mnist_serving.common.contract import MODEL_NAME  # noqa: E402

PACKAGES = ("common", "train", "export", "server", "client", "protos")


def baseline_tree(commit: str, work: Path) -> Path:
    """The commit's sources as an importable ``mnist_serving`` (a directory to put first on PYTHONPATH)."""
    tree, shim = work / "tree", work / "shim" / "mnist_serving"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    shim.mkdir(parents=True)
    for package in PACKAGES:
        (shim / package).symlink_to(tree / package)
    return shim.parent


def server(name: str, repository: Path, pythonpath: str | None) -> Server:
    port, http_port = free_port(), free_port()
    command = [
        sys.executable,
        "-c",
        "import sys; from mnist_serving.server.cli import main; sys.exit(main(sys.argv[1:]))",
        "--model-repository",
        str(repository),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--metrics-port",
        "-1",
        "--http-port",
        str(http_port),
        "--poll-interval",
        "0",
        "--log-level",
        "WARNING",
    ]
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    return Server(name, command, port, env=env, http_port=http_port)


def json_body(images: np.ndarray) -> bytes:
    tensor = {
        "name": "image",
        "datatype": "UINT8",
        "shape": list(images.shape),
        "data": images.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def rest_rate(port: int, body: Path, seconds: float) -> float:
    rps, codes = h2load_run.h2load(
        f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer",
        body,
        seconds,
        8,
        1,
        ("content-type: application/json",),
        ("--h1",),
    )
    if not codes or codes[0] == 0 or sum(codes[1:]):
        raise SystemExit(f"REST answers were not all 200: {codes}")
    return rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare with (A)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--docs", type=Path, help="write the table into this page (between ab markers)")
    parser.add_argument("--only", help="comma-separated scenarios: single, batch, rest (default: all)")
    parser.add_argument(
        "--block", default="ab", help="the marked block of --docs to write (one per comparison)"
    )
    args = parser.parse_args()
    only = set((args.only or "single,batch,rest").split(","))
    model = model_repository.published_model(ROOT / "models", MODEL_NAME)
    if model is None:
        raise SystemExit("no published model: run `make run` first")
    if "single" in only:
        h2load_run.require("the single-image scenario")
    repository = Path(model).resolve().parent.parent.parent
    mnist, work, data, single = test_set_files(Path(model).resolve(), "bench-ab-")
    rest = work / "rest64.json"
    rest.write_bytes(json_body(mnist.x_test[:64]))
    a = server(f"A ({args.baseline})", repository, str(baseline_tree(args.baseline, work / "baseline")))
    b = server("B (this tree)", repository, None)
    rounds = []
    try:
        for s in (a, b):
            s.start(work / f"{s.port}.log")
        for number in range(1, args.rounds + 1):
            row = {}
            # A and B back to back on each scenario, the first of the two alternating by round
            # (ABBA): the drift within a round and any advantage of going first cancel out.
            pair = (a, b) if number % 2 else (b, a)
            if "single" in only:
                for s in pair:
                    h2 = h2load_run.run(s.port, single, args.seconds, 16, 4, work / "h2.log")
                    row[f"{'A' if s is a else 'B'} single c=64"] = h2["requests_per_s"]
            if "batch" in only:
                for s in pair:
                    batch = run_v2(f"127.0.0.1:{s.port}", 4, 256, args.seconds, data)
                    if batch.get("wrong", 0) or batch.get("errors", 0) or "error" in batch:
                        raise SystemExit(f"{s.name}: batches of 256 had errors or wrong answers: {batch}")
                    row[f"{'A' if s is a else 'B'} batch256 c=4"] = batch["images_per_s"]
            if "rest" in only:
                for s in pair:
                    row[f"{'A' if s is a else 'B'} REST 64/call"] = rest_rate(s.http_port, rest, args.seconds)
            print(f"round {number}: {json.dumps(row)}", flush=True)
            rounds.append(row)
    finally:
        for s in (a, b):
            s.stop()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    tree = head.stdout.strip() + (" with uncommitted changes" if dirty.strip() else "")
    figures = {"baseline": args.baseline, "tree": tree, "seconds_per_run": args.seconds, "rounds": rounds}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ab.json").write_text(json.dumps(figures, indent=2))
    table = report(figures)
    print(table)
    if args.docs:
        heading = f"## A/B against `{args.baseline}` (`bench/ab.py`)"
        write_block(args.docs, args.block, heading, table)
    return 0


SCENARIOS = (
    ("single c=64", "single images, 64 in flight (h2load, v2 gRPC)", "req/s"),
    ("batch256 c=4", "batches of 256 (Triton's client, 4 callers)", "images/s"),
    ("REST 64/call", "REST JSON infer, 64 images a call (8 connections)", "calls/s"),
)


def report(figures: dict) -> str:
    rounds = figures["rounds"]
    lines = [
        f"A = `{figures['baseline']}`, B = `{figures['tree']}`; {len(rounds)} interleaved rounds of "
        f"{figures['seconds_per_run']:g} s a run; ratio = B / A within a round.",
        "",
        "| scenario | unit | A (median) | B (median) | ratio per round | median-round ratio |",
        "|---|---|---|---|---|---|",
    ]
    for key, caption, unit in SCENARIOS:
        if f"A {key}" not in rounds[0]:
            continue
        ratios = [r[f"B {key}"] / r[f"A {key}"] for r in rounds]
        a = statistics.median(r[f"A {key}"] for r in rounds)
        b = statistics.median(r[f"B {key}"] for r in rounds)
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        lines.append(
            f"| {caption} | {unit} | {a:,.0f} | {b:,.0f} | {shown} | **{statistics.median(ratios):.2f}** |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
