"""The REST front end's JSON parser and writer, chosen by measuring: the standard library
against orjson, on the bodies REST callers send and the answers they get.

    python bench/json_parse.py [--docs docs/benchmarks.md]

Parse: the body → a flat numpy array of the tensor's values (what the codec needs).
Write: 64 answers' probabilities and labels → JSON bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import orjson
from docs_block import write_block


def _per_call_ms(work, seconds: float = 1.0) -> float:
    work()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        work()
        count += 1
    return (time.perf_counter() - start) / count * 1e3


def bodies() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 28, 28))
    found = {}
    for datatype, values in (("UINT8", pixels.ravel().tolist()), ("FP32", (pixels / 255).ravel().tolist())):
        tensor = {"name": "image", "datatype": datatype, "shape": [64, 28, 28], "data": values}
        found[f"64 images, {datatype}"] = json.dumps({"inputs": [tensor]}).encode()
    return found


def measure() -> list[tuple[str, int, float, float]]:
    rows = []
    for name, body in bodies().items():
        dtype = np.float32 if "FP32" in name else np.int64

        def stdlib(body: bytes = body, dtype: type = dtype) -> None:
            np.asarray(json.loads(body)["inputs"][0]["data"], dtype=dtype)

        def fast(body: bytes = body, dtype: type = dtype) -> None:
            np.asarray(orjson.loads(body)["inputs"][0]["data"], dtype=dtype)

        rows.append((f"parse {name}", len(body), _per_call_ms(stdlib), _per_call_ms(fast)))
    probabilities = np.random.default_rng(1).random((64, 10)).astype(np.float32)
    labels = probabilities.argmax(axis=1)

    def write_stdlib() -> None:
        outputs = [{"data": probabilities.ravel().tolist()}, {"data": labels.tolist()}]
        json.dumps({"outputs": outputs}, separators=(",", ":")).encode()

    def write_fast() -> None:
        outputs = [{"data": probabilities.ravel()}, {"data": labels}]
        orjson.dumps({"outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)

    rows.append(
        (
            "write 64 answers (probabilities and labels)",
            0,
            _per_call_ms(write_stdlib),
            _per_call_ms(write_fast),
        )
    )
    return rows


def table(rows: list[tuple[str, int, float, float]]) -> str:
    lines = [
        "| work | body | standard library `json` | `orjson` | orjson is |",
        "|---|---|---|---|---|",
    ]
    for name, size, stdlib, fast in rows:
        shown = f"{size / 1e6:.2f} MB" if size else "—"
        lines.append(f"| {name} | {shown} | {stdlib:.2f} ms | {fast:.2f} ms | {stdlib / fast:.1f}× faster |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path)
    args = parser.parse_args()
    text = table(measure())
    print(text)
    if args.docs:
        write_block(
            args.docs, "json-parse", "## The REST JSON parser (`bench/json_parse.py`, one core)", text
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
