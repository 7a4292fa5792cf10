"""Turn one sitting's results into docs/benchmarks.md tables and PNG plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OURS = "mnist-serving"


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _get(rows: dict, scenario: str, key: str) -> float | None:
    row = rows.get(scenario) or {}
    return row.get(key)


def table(results: dict, scenarios: list[str], key: str, digits: int = 0) -> list[str]:
    names = list(results["servers"])
    lines = ["| scenario | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for scenario in scenarios:
        cells = [_fmt(_get(results["servers"][n], scenario, key), digits) for n in names]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return lines


def correctness(results: dict) -> list[str]:
    lines = ["| server | requests | errors | wrong answers |", "|---|---|---|---|"]
    for name, rows in results["servers"].items():
        requests = sum(r.get("requests", 0) for r in rows.values() if isinstance(r, dict))
        errors = sum(r.get("errors", 0) for r in rows.values() if isinstance(r, dict))
        wrong = sum(r.get("wrong", 0) for r in rows.values() if isinstance(r, dict))
        lines.append(f"| {name} | {requests:,} | {errors} | {wrong} |")
    return lines


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.0%}"


def heavy(results: dict) -> list[str]:
    """The heavy-batch scenario: what other callers see beside a loop of 2,000-scan batches."""
    row = results["servers"].get(OURS, {}).get("heavy batches")
    if not row:
        return []
    return [
        "## Beside a heavy batch job",
        "",
        f"One caller loops `ClassifyBatch` of {row['scans_per_batch']:,} encoded 400×400 JPEG scans "
        f"({row['batches']} batches, {row['batch_seconds_p50']:.2f} s each, {row['scans_per_s']:,.0f} "
        f"scans/s, {row['item_errors']} item errors); two other callers each start a call every 20 ms "
        "(`bench/heavy_batch.py`, default flags).",
        "",
        "| caller | calls | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        f"| health check | {row['health_calls']:,} | {row['health_p50_ms']:.1f} | "
        f"{row['health_p99_ms']:.1f} | {row['health_max_ms']:.1f} |",
        f"| single-image `Classify` | {row['single_calls']:,} | {row['single_p50_ms']:.1f} | "
        f"{row['single_p99_ms']:.1f} | {row['single_max_ms']:.1f} |",
        "",
    ]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _round_ratios(rounds: list[dict], numerator: str, denominator: str) -> list[float]:
    return [r[numerator] / r[denominator] for r in rounds if r.get(numerator) and r.get(denominator)]


def targets(results: dict) -> list[str]:
    """The targets, read from the interleaved rounds: each ratio within one round, then the median."""
    servers = results["servers"]
    rounds = (results.get("targets") or {}).get("rounds") or []
    heavy_row = servers.get(OURS, {}).get("heavy batches") or {}
    worst = max(heavy_row.get("health_p99_ms", 0), heavy_row.get("single_p99_ms", 0)) or None
    floor1, floor2 = "floor (1 process)", "floor (2 processes)"
    two = f"{OURS} (2 workers)"
    checks = [
        (
            "default flags ≥ 95% of the 1-process floor (h2load 16x4)",
            f"{OURS} h2load 16x4",
            f"{floor1} h2load 16x4",
            0.95,
        ),
        (
            "`--workers 2` ≥ 85% of the 2-process floor (h2load 16x4)",
            f"{two} h2load 16x4",
            f"{floor2} h2load 16x4",
            0.85,
        ),
        (
            "batches of 256 ≥ 70% of in-process onnxruntime (one thread, batch 256)",
            f"{OURS} v2 batch256 c=4",
            "in-process batch 256, 1 thread",
            0.70,
        ),
    ]

    def met(ok: bool | None) -> str:
        return "—" if ok is None else ("yes" if ok else "**no**")

    rows = []
    for label, numerator, denominator, goal in checks:
        ratios = _round_ratios(rounds, numerator, denominator)
        middle = _median(ratios)
        rows.append(
            (
                label,
                f"{_fmt(_median([r.get(numerator) for r in rounds]))} vs "
                f"{_fmt(_median([r.get(denominator) for r in rounds]))}; median round "
                f"{_ratio(middle, 1)} (rounds: {', '.join(f'{x:.0%}' for x in ratios) or '—'})",
                met(None if middle is None else middle >= goal),
            )
        )
    ours_p50 = _median([r.get(f"{OURS} h2load 1x1 p50_ms") for r in rounds])
    floor_p50 = _median([r.get(f"{floor1} h2load 1x1 p50_ms") for r in rounds])
    rows.append(
        (
            "single stream (h2load 1x1) against the floor",
            f"p50 {_fmt(ours_p50, 3)} ms vs {_fmt(floor_p50, 3)} ms (medians of the rounds)",
            "see text",
        )
    )
    rows.append(
        (
            "beside 2,000-scan batches: health and single calls p99 < 50 ms",
            f"worst p99 {_fmt(worst, 1)} ms",
            met(None if worst is None else worst < 50),
        )
    )
    wrong = sum(r.get("wrong answers", 0) for r in rounds)
    return [
        "## Targets of this sitting",
        "",
        f"Measured in {len(rounds)} interleaved round{'' if len(rounds) == 1 else 's'} "
        "with every server up at once: in each round, each server in turn, then onnxruntime "
        "in process; a ratio is taken within one round, seconds apart, and the median round "
        "is read. (Measured minutes apart, this machine moved the floor alone by up to 38%.) "
        f"Wrong answers or errors in the rounds' batch runs: {wrong}.",
        "",
        "| target | result | met? |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
    ]


def plots(results: dict, directory: Path) -> list[str]:
    concurrencies = sorted(
        {
            int(k.split("=")[1])
            for rows in results["servers"].values()
            for k in rows
            if k.startswith("v2 single c=")
        }
    )
    ceiling = max((r["images_per_s"] for r in results["ceiling"] if r["batch"] == 1), default=None)
    files = []
    for key, ylabel, name in (
        ("requests_per_s", "requests/s", "throughput"),
        ("p99_ms", "p99 latency (ms)", "p99"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server, rows in results["servers"].items():
            ys = [(c, rows.get(f"v2 single c={c}", {}).get(key)) for c in concurrencies]
            ys = [(c, y) for c, y in ys if y is not None]
            if ys:
                ax.plot([c for c, _ in ys], [y for _, y in ys], marker="o", label=server)
        if key == "requests_per_s" and ceiling:
            ax.axhline(ceiling, color="grey", linestyle=":", label="in-process onnxruntime, batch 1")
        ax.set(
            xscale="log",
            xlabel="concurrent callers (tritonclient, single images)",
            ylabel=ylabel,
            title=f"{ylabel} vs concurrency",
        )
        ax.set_yscale("log")  # the in-process ceiling is an order of magnitude above any server
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / f"bench-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path.name)
    return files


def write(results: dict, docs_file: Path) -> None:
    directory = docs_file.parent
    directory.mkdir(parents=True, exist_ok=True)
    pngs = plots(results, directory)
    m = results["machine"]
    ours = results["servers"].get(OURS, {})
    lines = [
        "# Benchmarks",
        "",
        f"One sitting on {m['date']}: {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, grpcio {m['grpcio']}, numpy {m['numpy']}. "
        f"Model: `{results['model']}`. "
        f"Each load run lasts {results['seconds_per_run']:g} s; the load generators run on the same cores as "
        "the servers, as clients would in a sidecar. Reproduce with `make bench` "
        "(peers: `bench/peers/setup.sh`, which `make bench` runs first).",
        "",
        "Servers: **mnist-serving** with default flags (one process, one onnxruntime thread, dynamic "
        "batching on), the same with batching off, the same with `--workers 2` (two processes sharing "
        "the port), the **Python gRPC floor** (`bench/floor_server.py`: a bare grpc.aio ModelInfer "
        "server over onnxruntime, no validation, metrics or batching; one process and two sharing the "
        "port; measured with h2load only), "
        "**MLServer 1.7.1** (`parallel_workers: 0`, its fastest mode here, a custom onnxruntime runtime) and "
        "**Triton 2.51** via PyTriton 0.7.0 (C++ gRPC front end and dynamic batcher; the model runs in a "
        "Python callable with onnxruntime). All serve the same `model.onnx`.",
        "",
        "## In-process ceiling (no server)",
        "",
        "| batch | threads | images/s | p50 ms per run |",
        "|---|---|---|---|",
        *[
            f"| {r['batch']} | {r['threads'] or 'default'} | {r['images_per_s']:,.0f} | {r['p50_ms']:.3f} |"
            for r in results["ceiling"]
        ],
        "",
        "## Requests per second",
        "",
        "`h2load 1x1`: one connection, one stream; `h2load 16x4`: 64 requests in flight over "
        "16 connections (enough for "
        "the kernel to spread them evenly over processes sharing a port) — h2load replays one "
        "pre-framed ModelInfer request (the same bytes for every server) and costs almost nothing. "
        "`v2 …`: Triton's asyncio client (tritonclient), closed loop. `own …`: the project's AsyncClient.",
        "",
        *table(
            results,
            [k for k in ours if "stream" not in k and "check" not in k and "heavy" not in k]
            or ["h2load 1x1"],
            "requests_per_s",
        ),
        "",
        "## Images per second",
        "",
        *table(results, [k for k in ours if "batch256" in k or "stream" in k], "images_per_s"),
        "",
        "## Latency (ms): p50 / p99",
        "",
        *table(
            results,
            [k for k in ours if "check" not in k and "stream" not in k and "heavy" not in k],
            "p50_ms",
            2,
        ),
        "",
        *table(
            results,
            [k for k in ours if "check" not in k and "stream" not in k and "heavy" not in k],
            "p99_ms",
            2,
        ),
        "",
        "## Correctness",
        "",
        "Every answer of the closed-loop generators is compared with in-process onnxruntime on the same "
        "images. h2load cannot see gRPC status (it counts HTTP 200), so its request is also sent once "
        "through gRPC and checked.",
        "",
        *correctness(results),
        "",
        *heavy(results),
        *targets(results),
        *[f"![{p}]({p})" for p in pngs],
        "",
    ]
    if "training" in results:
        t = results["training"]
        lines += [
            "## Training speed",
            "",
            f"Default recipe: {t['seconds_per_epoch']:.2f} s per epoch, {t['images_per_second']:,.0f} "
            "training images/s (measured over a short run of the real recipe).",
            "",
        ]
    analysis = directory / "benchmarks-analysis.md"
    if analysis.exists():
        lines += [analysis.read_text()]
    docs_file.write_text("\n".join(lines))
    (directory / "benchmarks.json").write_text(json.dumps(results, indent=2))
