"""A/B of the batch tool: this tree's `mnist-classify` against an earlier commit's, one server.

    python bench/ab_job.py --baseline a9ee4ba [--rounds 5] [--docs docs/batch.md]

Each round runs every input with A, then with B, as a user runs a job (the CLI, CSV to a
file); each ratio (B / A) is taken within its round, and the report reads the median round.
The server is this tree's, the same for both. The baseline's source is unpacked from git and
imported ahead of this checkout's. Inputs: 10,000 MNIST test digits as people save them
(28×28 PNGs, dark ink on white), 2,000 400×400 JPEG scans, and the test set as a .npy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from ab import baseline_tree, server  # noqa: E402
from decode_pool import scans  # noqa: E402
from docs_block import write_block  # noqa: E402

from mnist_serving.common import model_repository  # noqa: E402
from mnist_serving.common.contract import MODEL_NAME  # noqa: E402
from mnist_serving.common.mnist_data import load_mnist  # noqa: E402

INPUTS = ("dark-on-white PNGs", "JPEG scans", ".npy arrays")


def cli_command(tree: Path | None) -> list[str]:
    """The tree's batch tool (it moved to ``client.batch`` at one point in history)."""
    base = tree / "mnist_serving" / "client" if tree else ROOT / "client"
    module = "batch.cli" if (base / "batch" / "cli.py").exists() else "cli"
    code = f"import sys; from mnist_serving.client.{module} import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code]


def run_job(command: list[str], inputs: list[str], address: str, env: dict, out: Path) -> float:
    """Images per second, as the job's own summary reports them."""
    done = subprocess.run(
        [*command, "--no-progress", *inputs, "--server", address, "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"job failed ({done.returncode}): {done.stderr[-2000:]}")
    match = re.search(r"([\d,.]+) images/s", done.stderr)
    if match is None:
        raise SystemExit(f"no rate in the summary: {done.stderr[-1000:]}")
    return float(match.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare with (A)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--docs", type=Path, help="write the table into this page (block ab-job)")
    args = parser.parse_args()
    model = model_repository.published_model(ROOT / "models", MODEL_NAME)
    if model is None:
        raise SystemExit("no published model: run `make run` first")
    repository = Path(model).resolve().parent.parent.parent
    mnist = load_mnist()
    with tempfile.TemporaryDirectory(prefix="bench-ab-job-") as tmp:
        work = Path(tmp)
        pngs, jpgs = work / "pngs", work / "scans"
        pngs.mkdir()
        jpgs.mkdir()
        for i, digit in enumerate(mnist.x_test):
            Image.fromarray(255 - digit).save(pngs / f"{i:05d}.png")
        for i, blob in enumerate(scans(2000)):
            (jpgs / f"{i:05d}.jpg").write_bytes(blob)
        np.save(work / "test.npy", mnist.x_test)
        inputs = {INPUTS[0]: [str(pngs)], INPUTS[1]: [str(jpgs)], INPUTS[2]: [str(work / "test.npy")]}
        shim = baseline_tree(args.baseline, work / "baseline")
        trees = {"A": (cli_command(shim), {"PYTHONPATH": str(shim)}), "B": (cli_command(None), {})}
        own = server("server", repository, None)
        own.start(work / "server.log")
        rounds = []
        try:
            address = f"127.0.0.1:{own.port}"
            for number in range(1, args.rounds + 1):
                row = {}
                for name, paths in inputs.items():
                    for key, (command, extra) in trees.items():
                        env = {**os.environ, **extra}
                        row[f"{key} {name}"] = run_job(command, paths, address, env, work / "rows.csv")
                print(f"round {number}: {json.dumps(row)}", flush=True)
                rounds.append(row)
        finally:
            own.stop()
    lines = [
        f"A = `{args.baseline}`, B = this tree; {len(rounds)} interleaved rounds, "
        f"{time.strftime('%Y-%m-%d')}; ratio = B / A within a round (the job's own summary rate).",
        "",
        "| input | A (median) | B (median) | ratio per round | median-round ratio |",
        "|---|---|---|---|---|",
    ]
    for name in INPUTS:
        ratios = [r[f"B {name}"] / r[f"A {name}"] for r in rounds]
        a = statistics.median(r[f"A {name}"] for r in rounds)
        b = statistics.median(r[f"B {name}"] for r in rounds)
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        lines.append(f"| {name} | {a:,.0f}/s | {b:,.0f}/s | {shown} | **{statistics.median(ratios):.2f}** |")
    table = "\n".join(lines)
    print(table)
    if args.docs:
        heading = f"## A/B of the batch tool against `{args.baseline}` (`bench/ab_job.py`)"
        write_block(args.docs, "ab-job", heading, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
