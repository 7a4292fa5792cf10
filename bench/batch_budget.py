"""Where the CPU of a batch of 256 goes, and what that allows, in one sitting.

    python bench/batch_budget.py [--rounds 5] [--seconds 3] [--docs docs/benchmarks.md]

The batches-of-256 target compares mnist-serve, with Triton's client (2 callers) on the same
cores, with onnxruntime in process, which has every core to itself. This accounts for each
request's CPU time, read from /proc over the middle of each run:

- Triton's client and a bare grpc.aio server that answers without running a model
  (``bench/floor_server.py --no-model``): what the transport alone costs;
- mnist-serve with default flags, thread by thread: the event loop (which calls onnxruntime
  for a batch of 256 itself: ``--inline-big-runs``), gRPC's own threads, the other model
  threads (onnxruntime's pool, the model thread of small runs), and the cores left idle;
- onnxruntime in process on the same batch, with its default threads and with one thread;
- the same bare server running the model, nothing else around it, in the two ways a server can
  spread a batch over the cores: one run on onnxruntime's default threads called from the
  event loop (mnist-serve's design), and one-thread runs side by side in a pool of two threads.

From these, what no server on these cores can pass: the cores divided by the CPU time of one
request, if it paid only the client, the bare transport and onnxruntime at its in-process cost;
and what the simplest Python gRPC server reaches, measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import ceiling  # noqa: E402
from docs_block import write_block  # noqa: E402
from run import OURS, Server, free_port, loadgen_v2_command, servers, test_set_files  # noqa: E402

from mnist_serving.common import model_repository  # noqa: E402
from mnist_serving.common.contract import MODEL_NAME  # noqa: E402

BATCH, CALLERS = 256, 2
# The bare servers of bench/floor_server.py: their flags, and the label of their measured
# ratio (None: the transport alone, which runs no model and only feeds the bounds).
FLOORS = {
    "transport": (["--no-model"], None),
    "floor on the loop": (
        ["--threads", "0"],
        "bare gRPC server running the model on the loop, default threads",
    ),
    "floor pool": (
        ["--threads", "1", "--pool", "2"],
        "bare gRPC server running two one-thread runs side by side",
    ),
}
MEASURED_FLOORS = {key: label for key, (_, label) in FLOORS.items() if label is not None}
COLUMNS = ("ours", *FLOORS)  # the CPU table's columns, in the order of its header
TICK = os.sysconf("SC_CLK_TCK")
GRPC_THREADS = ("event_engine", "grpc_global_tim", "lifeguard")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of ``pid``: {tid: (comm, seconds)}."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended between the listing and the read
            continue
        fields = raw.rsplit(")", 1)[1].split()
        found[int(task.name)] = (
            raw.split("(", 1)[1].rsplit(")", 1)[0],
            (int(fields[11]) + int(fields[12])) / TICK,
        )
    return found


def idle_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / TICK


def under_load(server: Server, data: dict, seconds: float) -> dict:
    """Triton's client, 2 callers of 256, against ``server``: the rate, and CPU ms per request."""
    client = subprocess.Popen(
        loadgen_v2_command(f"127.0.0.1:{server.port}", CALLERS, BATCH, seconds + 2.0, data),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # the client's start-up (imports, first calls) stays out of the window
    before = (thread_cpu(server.process.pid), thread_cpu(client.pid), idle_seconds(), time.perf_counter())
    time.sleep(seconds)  # the measuring window itself
    after = (thread_cpu(server.process.pid), thread_cpu(client.pid), idle_seconds(), time.perf_counter())
    summary = json.loads(client.communicate()[0])
    window = after[3] - before[3]
    requests = summary["requests_per_s"] * window  # the closed loop runs at a steady rate

    def spent(which: int, keep) -> float:
        old = before[which]
        return sum(s - old.get(t, ("", 0.0))[1] for t, (name, s) in after[which].items() if keep(t, name))

    main = server.process.pid
    return {
        "images_per_s": summary["images_per_s"],
        "errors": summary["errors"],
        "client_ms": spent(1, lambda t, n: True) / requests * 1e3,
        "loop_ms": spent(0, lambda t, n: t == main) / requests * 1e3,
        "grpc_ms": spent(0, lambda t, n: n.startswith(GRPC_THREADS)) / requests * 1e3,
        "model_ms": spent(0, lambda t, n: t != main and not n.startswith(GRPC_THREADS)) / requests * 1e3,
        "idle_ms": (after[2] - before[2]) / requests * 1e3,
        "idle_cores": (after[2] - before[2]) / window,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--docs", type=Path, help="write the table into this page (block batch-budget)")
    parser.add_argument("--model", type=Path, help="a published model.onnx (default: the newest in models/)")
    args = parser.parse_args()
    model = args.model or model_repository.published_model(ROOT / "models", MODEL_NAME)
    if model is None:
        raise SystemExit("no published model: run `make run` first")
    model = Path(model).resolve()
    _, work, data, _ = test_set_files(model, "bench-budget-")
    ours = next(s for s in servers(model, [], quick=True) if s.name == OURS)
    floors = {key: floor_server(model, flags) for key, (flags, _) in FLOORS.items()}
    started = [ours, *floors.values()]
    rounds = []
    try:
        for server in started:
            server.start(work / f"{server.port}.log")
        for number in range(1, args.rounds + 1):
            row = {
                "default threads": ceiling.measure(str(model), 0, (BATCH,), args.seconds)[0],
                "one thread": ceiling.measure(str(model), 1, (BATCH,), args.seconds)[0],
                **{key: under_load(server, data, args.seconds) for key, server in floors.items()},
                "ours": under_load(ours, data, args.seconds),
            }
            if row["ours"]["errors"]:
                raise SystemExit(f"batches of 256 had errors: {row['ours']}")
            print(f"round {number}: {json.dumps(row)}", flush=True)
            rounds.append(row)
    finally:
        for server in started:
            server.stop()
    table = report(rounds, os.cpu_count() or 1)
    print(table)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "batch_budget.json").write_text(json.dumps(rounds, indent=2))
    if args.docs:
        write_block(
            args.docs,
            "batch-budget",
            "## Where a batch of 256 spends its CPU (`bench/batch_budget.py`)",
            table,
        )
    return 0


def floor_server(model: Path, flags: list[str]) -> Server:
    """``bench/floor_server.py`` on a free port with ``flags``."""
    port = free_port()
    command = [sys.executable, str(HERE / "floor_server.py"), str(model), "--port", str(port), *flags]
    return Server("floor " + " ".join(flags), command, port, floor=True)


def bounds(row: dict, cores: int) -> dict:
    """Per round: the ratios to in-process onnxruntime (default threads) of mnist-serve, and of
    a server that paid only the client, the bare transport and onnxruntime's in-process CPU."""
    reference = row["default threads"]["images_per_s"]
    paid = row["transport"]["client_ms"] + row["transport"]["loop_ms"] + row["transport"]["grpc_ms"]
    bound = {
        k: cores * 1e3 / (paid + row[k]["cpu_ms"]) * BATCH / reference
        for k in ("default threads", "one thread")
    }
    measured = {k: row[k]["images_per_s"] / reference for k in ("ours", *MEASURED_FLOORS)}
    return {**measured, **bound}


def report(rounds: list[dict], cores: int) -> str:
    def med(path: tuple[str, str]) -> float:
        return statistics.median(r[path[0]][path[1]] for r in rounds)

    def row(label: str, key: str, model: bool = False) -> str:
        cells = ["—" if model and k == "transport" else f"{med((k, key)):.2f}" for k in COLUMNS]
        return f"| {label} | " + " | ".join(cells) + " |"

    per_round = [bounds(r, cores) for r in rounds]
    transport_ms = med(("transport", "loop_ms")) + med(("transport", "grpc_ms"))
    lines = [
        f"One sitting, {time.strftime('%Y-%m-%d')}, {cores} cores, {len(rounds)} rounds; Triton's client "
        f"with {CALLERS} callers of {BATCH} images on the same cores; CPU milliseconds per request "
        "(medians of the rounds).",
        "",
        "| where | mnist-serve, default flags | bare gRPC server, no model "
        "| bare, model on the loop (default threads) | bare, two one-thread runs in a pool |",
        "|---|---|---|---|---|",
        row("Triton's client", "client_ms"),
        row("the server's event loop (for a batch of 256, also onnxruntime's calling thread)", "loop_ms"),
        row("gRPC's own threads", "grpc_ms"),
        row("onnxruntime's other threads (the pool's, for the last column)", "model_ms", model=True),
        "| cores left idle | "
        + " | ".join(f"{med((k, 'idle_ms')):.2f} ({med((k, 'idle_cores')):.2f} cores)" for k in COLUMNS)
        + " |",
        "| images/s | " + " | ".join(f"{med((k, 'images_per_s')):,.0f}" for k in COLUMNS) + " |",
        "",
        "onnxruntime in process, the same batch: default threads "
        f"{med(('default threads', 'images_per_s')):,.0f} "
        f"images/s at {med(('default threads', 'cpu_ms')):.2f} CPU ms a batch; one thread "
        f"{med(('one thread', 'images_per_s')):,.0f} images/s at {med(('one thread', 'cpu_ms')):.2f} CPU ms "
        f"(the bare server's own work: {transport_ms:.2f} ms).",
        "",
        "| ratio to in-process onnxruntime (default threads) | per round | median round |",
        "|---|---|---|",
    ]
    for key, label in (
        ("ours", "mnist-serve, measured"),
        *((k, f"{label}, measured") for k, label in MEASURED_FLOORS.items()),
        (
            "default threads",
            "bound: client + bare transport + onnxruntime at its in-process default-thread cost",
        ),
        ("one thread", "bound: client + bare transport + onnxruntime at its in-process one-thread cost"),
    ):
        values = [b[key] for b in per_round]
        lines.append(
            f"| {label} | {', '.join(f'{v:.2f}' for v in values)} | **{statistics.median(values):.2f}** |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
