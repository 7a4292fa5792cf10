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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mnist_serving.client.batch.job import Row
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


@dataclass
class Resume:
    """What ``--resume`` keeps of an output: its complete rows, the last one's (source, index),
    and the bytes they take (a torn last line past them is cut before the first new row)."""

    rows: int = 0
    last: tuple[str, int] | None = None
    keep_bytes: int | None = None  # None: the file is kept whole


def completed(path: Path, fmt: str, probabilities: bool) -> Resume:
    """Checks the whole file before anything is changed: a file this tool did not write with
    these settings (other columns, format or --probabilities) is refused, left as it was."""
    if not path.exists() or path.stat().st_size == 0:
        return Resume()
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ResumeError(f"{path}: not text; not an output of mnist-classify") from None
    records = (
        _csv_records(text, path, probabilities) if fmt == "csv" else _jsonl_records(text, path, probabilities)
    )
    rows, last, end = 0, None, 0
    for row, row_end in records:
        rows, last, end = rows + 1, row, row_end
    keep = len(text[:end].encode()) if end < len(text) else None
    return Resume(rows, last, keep)


def _torn(rest: str, quoted: bool = False) -> bool:
    """Whether ``rest``, what follows the last complete row, is one row cut short by a kill:
    rows are written whole, so it has no line end, or (CSV) only inside its still-open quotes
    (a name with a newline in it)."""
    return "\n" not in rest or (quoted and rest.count('"') % 2 == 1)


def _csv_records(text: str, path: Path, probabilities: bool) -> Iterator[tuple[tuple[str, int], int]]:
    columns = header(probabilities)
    buffer, ends = io.StringIO(text), []

    def lines() -> Iterator[str]:
        while line := buffer.readline():
            ends.append(buffer.tell())
            yield line

    reader = csv.reader(lines(), strict=True)
    try:
        first = next(reader, None)
    except csv.Error:
        first = None
    if first != columns:
        if first == header(not probabilities):
            has = "no " if probabilities else ""
            raise ResumeError(
                f"{path}: its rows have {has}probabilities; resume with the same --probabilities"
            )
        raise ResumeError(f"{path}: not a CSV written by mnist-classify (its header differs)")
    end = ends[-1]
    try:
        for row in reader:
            if len(row) != len(columns) or not row[1].isdigit():
                raise csv.Error(f"a row of {len(row)} fields")
            end = ends[-1]
            yield (row[0], int(row[1])), end
    except csv.Error as exc:
        if not _torn(text[end:], quoted=True):
            raise ResumeError(f"{path}: not a CSV written by mnist-classify ({exc})") from None


def _jsonl_records(text: str, path: Path, probabilities: bool) -> Iterator[tuple[tuple[str, int], int]]:
    end = 0
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        try:
            entry = json.loads(line)
            if not (isinstance(entry, dict) and isinstance(entry.get("index"), int) and "source" in entry):
                raise ValueError("not a row")
        except ValueError:
            if line.startswith("{") and _torn(text[end:]):
                return
            raise ResumeError(f"{path}: not JSON Lines written by mnist-classify (line {number})") from None
        if entry.get("error") is None and ("probabilities" in entry) != probabilities:
            has = "" if "probabilities" in entry else "no "
            raise ResumeError(
                f"{path}: its rows have {has}probabilities; resume with the same --probabilities"
            )
        end += len(line)
        yield (str(entry["source"]), entry["index"]), end


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


def completed_parquet(directory: Path, probabilities: bool) -> tuple[int, tuple[str, int] | None, int]:
    """Rows in the complete parts of ``directory``, the last row's name, and the next part's
    number; parts left half-written by a crash (temporary names) are removed, once every part
    is known to be this tool's with these settings (a foreign directory is left as it was)."""
    if not directory.exists():
        return 0, None, 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    numbered = [(p, p.name[len("part-") : -len(".parquet")]) for p in directory.glob("part-*.parquet")]
    if any(not number.isdigit() for _, number in numbered):
        raise ResumeError(f"{directory}: holds part files mnist-classify did not write")
    parts = [p for p, number in sorted(numbered, key=lambda item: int(item[1]))]
    wanted = [name for name in header(probabilities)]
    for part in parts:
        try:
            names = pq.read_schema(part).names
        except (OSError, pa.ArrowException) as exc:
            raise ResumeError(f"{part}: not a Parquet file ({str(exc)[:200]})") from None
        if names != wanted:
            has = "no " if probabilities else ""
            why = (
                f"its rows have {has}probabilities" if names == header(not probabilities) else "other columns"
            )
            raise ResumeError(f"{part}: {why}; not an output of mnist-classify with these settings")
    for leftover in directory.glob(".part-*.parquet.tmp"):
        leftover.unlink()
    if not parts:
        return 0, None, 0
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    table = pq.read_table(parts[-1], columns=["source", "index"])
    last = table.slice(table.num_rows - 1).to_pylist()[0]
    return (
        rows,
        (last["source"], int(last["index"])),
        int(parts[-1].name[len("part-") : -len(".parquet")]) + 1,
    )
