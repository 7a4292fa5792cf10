"""Turn one sitting's results into docs/benchmarks.md tables and PNG plots."""

from __future__ import annotations

import json
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
        "Servers: **mnist-serving** (one process, one onnxruntime thread, dynamic batching on), the same "
        "with batching off, the same with `--workers 2` (two processes sharing the port), "
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
        "`h2load 1x1`: one connection, one stream; `h2load 4x16`: 64 requests in flight — h2load replays one "
        "pre-framed ModelInfer request (the same bytes for every server) and costs almost nothing. "
        "`v2 …`: Triton's asyncio client (tritonclient), closed loop. `own …`: the project's AsyncClient.",
        "",
        *table(
            results,
            [k for k in ours if "stream" not in k and "check" not in k] or ["h2load 1x1"],
            "requests_per_s",
        ),
        "",
        "## Images per second",
        "",
        *table(results, [k for k in ours if "batch256" in k or "stream" in k], "images_per_s"),
        "",
        "## Latency (ms): p50 / p99",
        "",
        *table(results, [k for k in ours if "check" not in k and "stream" not in k], "p50_ms", 2),
        "",
        *table(results, [k for k in ours if "check" not in k and "stream" not in k], "p99_ms", 2),
        "",
        "## Correctness",
        "",
        "Every answer of the closed-loop generators is compared with in-process onnxruntime on the same "
        "images. h2load cannot see gRPC status (it counts HTTP 200), so its request is also sent once "
        "through gRPC and checked.",
        "",
        *correctness(results),
        "",
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
