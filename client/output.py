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


class ParquetWriter:
    """A Parquet dataset: part files of ``part_rows`` rows, each written under a temporary
    name and renamed into place when complete, so a crash never leaves a broken part (rows
    not yet in a part are simply redone by ``--resume``)."""

    def __init__(
        self, directory: Path, probabilities: bool, first_part: int = 0, part_rows: int = 65536
    ) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ResumeError("Parquet output needs pyarrow: pip install 'mnist-serving[batch]'") from None
        self.pa, self.pq = pa, pq
        self.directory, self.probabilities, self.part, self.part_rows = (
            directory,
            probabilities,
            first_part,
            part_rows,
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.pending: list[Row] = []

    def write(self, rows: list[Row]) -> None:
        self.pending += rows
        while len(self.pending) >= self.part_rows:
            self._flush(self.pending[: self.part_rows])
            self.pending = self.pending[self.part_rows :]

    def close(self) -> None:
        if self.pending:
            self._flush(self.pending)
            self.pending = []

    def _flush(self, rows: list[Row]) -> None:
        pa = self.pa
        columns = {
            "source": pa.array([r.source for r in rows], pa.string()),
            "index": pa.array([r.index for r in rows], pa.int64()),
            "label": pa.array([r.label for r in rows], pa.int64()),
            "confidence": pa.array([r.confidence for r in rows], pa.float32()),
        }
        if self.probabilities:
            for d in range(NUM_CLASSES):
                columns[f"p{d}"] = pa.array(
                    [None if r.probabilities is None else float(r.probabilities[d]) for r in rows],
                    pa.float32(),
                )
        columns["error"] = pa.array([r.error for r in rows], pa.string())
        final = self.directory / f"part-{self.part:05d}.parquet"
        temporary = self.directory / f".{final.name}.tmp"
        self.pq.write_table(pa.table(columns), temporary)
        temporary.replace(final)
        self.part += 1


def completed_parquet(directory: Path) -> tuple[int, tuple[str, int] | None, int]:
    """Rows in the complete parts of ``directory``, the last row's name, and the next part's
    number; parts left half-written by a crash (temporary names) are removed."""
    if not directory.exists():
        return 0, None, 0
    import pyarrow.parquet as pq

    for leftover in directory.glob(".part-*.parquet.tmp"):
        leftover.unlink()
    parts = sorted(directory.glob("part-*.parquet"))
    if not parts:
        return 0, None, 0
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    table = pq.read_table(parts[-1], columns=["source", "index"])
    last = table.slice(table.num_rows - 1).to_pylist()[0]
    return rows, (last["source"], int(last["index"])), len(parts)
