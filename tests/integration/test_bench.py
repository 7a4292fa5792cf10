"""The benchmark harness runs end to end on a tiny setting (figures come from `make bench`)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bench_harness_quick(model_repository, tmp_path):
    results = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--seconds",
            "0.3",  # each reading's window: a 2-core machine busy with other tests still completes requests
            "--peers",
            "",
            "--model",
            str(model_repository / "mnist" / "1" / "model.onnx"),
            "--results",
            str(results),
            "--docs",
            str(tmp_path / "docs" / "benchmarks.md"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads(results.read_text())
    assert {r["batch"] for r in data["ceiling"]} == {1, 8, 64, 256, 1024}
    rows = data["servers"]["mnist-serving"]
    for name in ("v2 single c=1", "own single c=16", "own batch256 c=1", "own stream test set"):
        assert rows[name]["requests"] > 0 and rows[name]["errors"] == 0 and rows[name]["wrong"] == 0, name
    assert rows["h2load answer check"]["ok"]
    (round_row,) = data["targets"]["rounds"]  # quick: one round of the interleaved targets
    assert round_row["mnist-serving h2load 16x4"] > 0, (round_row, done.stderr[-3000:])
    assert round_row["floor (1 process) h2load 16x4"] > 0, (round_row, done.stderr[-3000:])
    assert round_row["mnist-serving v2 batch256 c=4"] > 0 and round_row["wrong answers"] == 0
    report = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "| v2 single c=1 |" in report and (tmp_path / "docs" / "bench-throughput.png").is_file()
    assert "Measured in 1 interleaved round with" in report and "median round" in report
