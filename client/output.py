"""Result rows → CSV or JSON Lines, written as the job goes and resumable after a crash.

Rows arrive in input order and each chunk is flushed whole, so whatever is on disk after a
kill is a valid prefix of the full output (at most a torn last line, which ``resume``
cuts off). ``--resume`` counts the complete rows already written, checks that the last one
names the same image the inputs put there, and appends from the next one.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TextIO

from mnist_serving.client.job import Row
from mnist_serving.common.contract import NUM_CLASSES


def header(probabilities: bool) -> list[str]:
    probs = [f"p{d}" for d in range(NUM_CLASSES)] if probabilities else []
    return ["source", "index", "label", "confidence", *probs, "error"]


class Writer:
    """CSV or JSON Lines rows: source, index, label, confidence[, probabilities], error."""

    def __init__(self, out: TextIO, fmt: str, probabilities: bool, write_header: bool = True) -> None:
        self.out, self.fmt, self.probabilities = out, fmt, probabilities
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None and write_header:
            self.csv.writerow(header(probabilities))
            out.flush()

    def write(self, rows: list[Row]) -> None:
        buffer = io.StringIO()  # one write per chunk: a crash tears at most the last line
        writer = csv.writer(buffer) if self.csv is not None else None
        for row in rows:
            if writer is not None:
                if row.error is not None:
                    empty = [""] * (NUM_CLASSES if self.probabilities else 0)
                    writer.writerow([row.source, row.index, "", "", *empty, row.error])
                    continue
                line = [row.source, row.index, row.label, f"{row.confidence:.6f}"]
                if self.probabilities:
                    line += [f"{p:.6f}" for p in row.probabilities]
                writer.writerow([*line, ""])
            else:
                entry: dict = {"source": row.source, "index": row.index}
                if row.error is not None:
                    entry.update(label=None, confidence=None, error=row.error)
                else:
                    entry.update(label=row.label, confidence=round(row.confidence, 6))
                    if self.probabilities:
                        entry["probabilities"] = [round(float(p), 6) for p in row.probabilities]
                buffer.write(json.dumps(entry) + "\n")
        self.out.write(buffer.getvalue())
        self.out.flush()


class ResumeError(ValueError):
    """The existing output does not belong to these inputs (a usage error)."""


def completed(path: Path, fmt: str) -> tuple[int, tuple[str, int] | None]:
    """Complete rows already in ``path`` and the (source, index) of the last; a torn last
    line (the job was killed mid-write) is cut off the file."""
    if not path.exists() or path.stat().st_size == 0:
        return 0, None
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
        data = data[:end]
    text = data.decode("utf-8")
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or rows[0][:2] != ["source", "index"]:
            raise ResumeError(f"{path}: not a CSV written by mnist-classify (no header)")
        body = rows[1:]
        return len(body), ((body[-1][0], int(body[-1][1])) if body else None)
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        last = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        raise ResumeError(f"{path}: not JSON Lines written by mnist-classify") from None
    return len(lines), ((last["source"], int(last["index"])) if last else None)
