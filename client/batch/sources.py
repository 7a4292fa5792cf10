"""CLI inputs → a lazy stream of chunks, in command-line order, with bounded memory.

Image files (named, in directories walked lazily and recursively, matched by globs or listed
in ``--files-from``), IDX (gzip or not), ``.npy`` through a memory map, ``.npz``, standard
input, the MNIST test set. Nothing is read before it is needed: a directory of millions of
files or a ``.npy`` of ten million images costs one chunk of memory at a time.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import io
import itertools
import mmap
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_serving.common.contract import IMAGE_PIXELS, IMAGE_SHAPE, pixels_from_unit_floats
from mnist_serving.common.idx import IdxError, parse_idx

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
STDIN = "-"


class InputError(ValueError):
    """An input cannot be read as images (a usage error: exit 2)."""


@dataclass
class Chunk:
    """Consecutive inputs of one kind: files (paths, or stdin bytes), rows of one array, or
    encoded images held in a table (a Parquet bytes column)."""

    files: list[str] = field(default_factory=list)  # paths, named as the output names them
    stdin: bytes | None = None  # the encoded image read from standard input
    source: str = ""  # the array's or table's name (arrays and tables only)
    start: int = 0  # index of the first row within that array or table
    array: np.ndarray | None = None  # uint8 [n,28,28]
    blobs: list[bytes] | None = None  # encoded images, one per table row
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        if self.array is not None:
            return len(self.array)
        return len(self.blobs) if self.blobs is not None else len(self.files)

    def names(self) -> list[tuple[str, int]]:
        """(source, index) of each row, as the output names them."""
        if self.array is not None or self.blobs is not None:
            return [(self.source, self.start + i) for i in range(len(self))]
        return [(p, 0) for p in self.files]


@dataclass
class Inputs:
    """What the inputs hold, found while streaming them (for the job's summary)."""

    skipped: int = 0  # non-image files inside directories (counted, not kept: there may be millions)


def _is_idx(data: bytes) -> bool:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)[:4]
        except OSError:
            return False
    return len(data) >= 4 and data[0] == 0 and data[1] == 0 and data[2] in (8, 9, 11, 12, 13, 14)


def _as_images(array: np.ndarray, source: str) -> np.ndarray:
    """uint8 [N,28,28] (a view of ``array`` where it can be: memory maps stay on disk)."""
    if array.ndim == 2 and array.shape == IMAGE_SHAPE:
        array = array[None]
    if array.ndim == 2 and array.shape[1] == IMAGE_PIXELS:
        array = array.reshape(-1, *IMAGE_SHAPE)
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"{source}: array of shape {list(array.shape)}; expected [N,28,28], [N,784] or [28,28]"
        )
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array  # converted chunk by chunk (see _uint8), so a float memory map stays on disk
    raise InputError(f"{source}: dtype {array.dtype}; expected uint8, or float in [0, 1]")


def _uint8(rows: np.ndarray, source: str) -> np.ndarray:
    if rows.dtype == np.uint8:
        return np.ascontiguousarray(rows)
    if rows.dtype.kind in "iu":  # integer pixels (what pyarrow makes of Python ints)
        if rows.size and (rows.min() < 0 or rows.max() > 255):
            raise InputError(f"{source}: integer pixels outside 0..255")
        return rows.astype(np.uint8)
    try:
        return pixels_from_unit_floats(np.asarray(rows))
    except ValueError as exc:
        raise InputError(f"{source}: float images {exc}") from None


def _idx_labels_beside(path: Path) -> np.ndarray | None:
    """train-images-idx3-ubyte → train-labels-idx1-ubyte[.gz], if it is there."""
    name = path.name
    if "images-idx3" not in name:
        return None
    stem = name.replace("images-idx3", "labels-idx1").removesuffix(".gz")
    for candidate in (path.with_name(stem), path.with_name(stem + ".gz")):
        if candidate.is_file():
            labels = parse_idx(candidate.read_bytes(), str(candidate))
            return labels if labels.ndim == 1 else None
    return None


def _array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(images, labels) of a .npy (memory-mapped), .npz or IDX file; None if it is none of them."""
    with path.open("rb") as f:
        head = f.read(8)
    source = str(path)
    if head[:6] == b"\x93NUMPY":
        try:
            return _as_images(np.load(path, mmap_mode="r", allow_pickle=False), source), None
        except ValueError as exc:
            raise InputError(f"{source}: {exc}") from None
    if head[:4] == b"PK\x03\x04" and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        images = next((a for a in arrays.values() if a.ndim in (2, 3) and a.size % IMAGE_PIXELS == 0), None)
        if images is None:
            raise InputError(f"{source}: no [N,28,28] array inside")
        labels = next((arrays[k] for k in ("labels", "y", "y_test", "y_train") if k in arrays), None)
        return _as_images(images, source), labels
    if head[:2] in (b"\x1f\x8b", b"\x00\x00"):
        data = path.read_bytes()
        if _is_idx(data):
            try:
                return _as_images(parse_idx(data, source), source), _idx_labels_beside(path)
            except IdxError as exc:
                raise InputError(str(exc)) from None
    return None


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a table hold the images and the labels (``--image-column``,
    ``--label-column``); an image column left unnamed is ``image``, or the one column that
    can hold images."""

    image: str | None = None
    label: str = "label"
    label_named: bool = False  # --label-column given: a table without it is a mistake


def _image_kind(pa: Any, dtype: Any) -> str | None:
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        return "bytes"
    if pa.types.is_struct(dtype) and dtype.get_field_index("bytes") >= 0:
        return "struct"  # as Hugging Face datasets store images
    if pa.types.is_list(dtype) or pa.types.is_fixed_size_list(dtype) or pa.types.is_large_list(dtype):
        return "pixels"
    return None


def _image_column(pa: Any, schema: Any, wanted: str | None, path: Path) -> tuple[str, str]:
    kinds = {n: k for n in schema.names if (k := _image_kind(pa, schema.field(n).type)) is not None}
    if wanted is not None:
        if wanted not in schema.names:
            raise InputError(
                f"{path}: no column '{wanted}' (--image-column); its columns: {schema.names[:20]}"
            )
        if wanted not in kinds:
            raise InputError(f"{path}: column '{wanted}' holds neither encoded images (bytes) nor 784 pixels")
        return wanted, kinds[wanted]
    if "image" in kinds:
        return "image", kinds["image"]
    if len(kinds) == 1:
        return next(iter(kinds.items()))
    if not kinds:
        raise InputError(f"{path}: no column of encoded images (bytes) or of 784 pixels")
    raise InputError(
        f"{path}: columns {list(kinds)[:20]} could each hold the images; name one with --image-column"
    )


def _parquet_chunks(path: Path, batch_size: int, columns: TableColumns) -> Iterator[Chunk]:
    """A Parquet file, a record batch at a time: a bytes column of encoded images (or a struct
    with a ``bytes`` field), or a list column of 784 pixels (uint8, integers in 0..255, or
    floats in [0, 1]); the label column, where there is one, gives the truth (a null label is
    no label)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            f"{path}: reading Parquet needs pyarrow: pip install 'mnist-serving[batch]'"
        ) from None
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({str(exc)[:200]})") from None
    schema = table.schema_arrow
    column, kind = _image_column(pa, schema, columns.image, path)
    if columns.label_named and columns.label not in schema.names:
        raise InputError(f"{path}: no column '{columns.label}' (--label-column)")
    wanted = [column] + ([columns.label] if columns.label in schema.names and columns.label != column else [])
    start = 0
    for batch in table.iter_batches(batch_size=batch_size, columns=wanted):
        data = batch.column(0)
        labels = None
        if len(wanted) > 1:
            truth = batch.column(1)
            if not pa.types.is_integer(truth.type):
                raise InputError(f"{path}: column '{columns.label}' holds {truth.type}, not integer labels")
            labels = np.asarray(truth.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        source = str(path)
        if kind == "pixels":
            pixels = np.asarray(data.flatten().to_numpy(zero_copy_only=False))
            if pixels.size != len(batch) * IMAGE_PIXELS:
                raise InputError(f"{path}: column '{column}' rows are not {IMAGE_PIXELS} pixels each")
            images = _uint8(pixels.reshape(len(batch), *IMAGE_SHAPE), f"{path}: column '{column}'")
            yield Chunk(source=source, start=start, array=images, labels=labels)
        else:
            values = data.field("bytes") if kind == "struct" else data
            yield Chunk(
                source=source, start=start, blobs=[v or b"" for v in values.to_pylist()], labels=labels
            )
        start += len(batch)


def _entries(directory: str | Path) -> list[os.DirEntry]:
    """One directory's listing, sorted: the only listing held at a time, per level walked."""
    with os.scandir(directory) as scan:
        return sorted(scan, key=lambda e: e.name)


def _walk(directory: str, inputs: Inputs) -> Iterator[str]:
    """Image files under ``directory`` (as ``str(Path(...))`` names it), recursively, in sorted
    order, listed lazily; named as pathlib would name them (``a/b.png``; ``b.png`` under ``.``),
    as plain strings: a ``Path`` each costs twice the rest of the walk (11 against 5 µs a
    file), and again in the decode worker that unpickles it."""
    try:
        entries = _entries(directory)
    except OSError as exc:
        raise InputError(f"{directory}: {exc.strerror}") from None
    prefix = "" if directory == "." else os.path.join(directory, "")
    for entry in entries:
        path = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path, inputs)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            yield path
        elif entry.is_file():
            inputs.skipped += 1


def _glob(pattern: str) -> Iterator[Path]:
    """The files ``glob.glob(pattern, recursive=True)`` finds, in path order (a directory's
    entries by name), listed one directory at a time: the first match comes before the rest
    are listed. Hidden names match only a pattern part that starts with a dot, as in glob."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    yield from _match(Path(*parts[:fixed]) if fixed else None, parts[fixed:])


def _match(directory: Path | None, parts: tuple[str, ...]) -> Iterator[Path]:
    """Files under ``directory`` (None: the working directory, whose matches are named bare,
    as glob names them) that match ``parts``."""
    head, rest = parts[0], parts[1:]
    if not glob.has_magic(head):
        path = directory / head if directory else Path(head)
        if rest:
            yield from _match(path, rest) if path.is_dir() else ()
        elif path.is_file():
            yield path
        return
    try:
        entries = _entries(directory or Path("."))
    except OSError:
        return  # glob too finds nothing in what it cannot list
    for entry in entries:
        path = directory / entry.name if directory else Path(entry.name)
        is_dir = entry.is_dir()
        if head == "**":
            if entry.name.startswith("."):
                continue
            if rest:  # "**" as no directory at all: this entry against what follows it
                if fnmatch.fnmatchcase(entry.name, rest[0]) and _hidden_ok(entry.name, rest[0]):
                    if len(rest) == 1 and entry.is_file():
                        yield path
                    elif len(rest) > 1 and is_dir:
                        yield from _match(path, rest[1:])
            elif entry.is_file():
                yield path
            if is_dir and not entry.is_symlink():
                yield from _match(path, parts)
        elif fnmatch.fnmatchcase(entry.name, head) and _hidden_ok(entry.name, head):
            if rest:
                yield from _match(path, rest) if is_dir else ()
            elif entry.is_file():
                yield path


def _hidden_ok(name: str, part: str) -> bool:
    return not name.startswith(".") or part.startswith(".")


def _listed(files_from: str) -> Iterator[str]:
    stream = sys.stdin if files_from == STDIN else open(files_from, encoding="utf-8")  # noqa: SIM115
    try:
        for line in stream:
            if line.strip():
                yield line.rstrip("\n")
    finally:
        if stream is not sys.stdin:
            stream.close()


def _stdin_array(data: bytes) -> tuple[np.ndarray, np.ndarray | None] | None:
    if data[:6] == b"\x93NUMPY":
        return _as_images(np.load(io.BytesIO(data), allow_pickle=False), STDIN), None
    if _is_idx(data):
        try:
            return _as_images(parse_idx(data, STDIN), STDIN), None
        except IdxError as exc:
            raise InputError(str(exc)) from None
    return None


def chunks(
    inputs: Iterable[str],
    batch_size: int,
    found: Inputs,
    arrays: Iterable[tuple[str, np.ndarray, np.ndarray | None]] = (),
    table_columns: TableColumns = TableColumns(),
    listed: Iterable[str] = (),
) -> Iterator[Chunk]:
    """Every input, in order, as chunks of at most ``batch_size`` rows of one kind.

    ``inputs`` are the command line's: one that does not exist, or is no kind of input, is a
    usage error. ``listed`` are ``--files-from``'s, streamed: such a path becomes a row with
    an error (the job goes on, and ``--resume`` skips it as done).
    """
    files: list[str] = []

    def flush() -> Iterator[Chunk]:
        nonlocal files
        if files:
            yield Chunk(files=files)
            files = []

    def array_chunks(source: str, images: np.ndarray, labels: np.ndarray | None) -> Iterator[Chunk]:
        yield from flush()
        mapped = getattr(images, "_mmap", None)  # a .npy on disk: pages are read, used, released
        for start in range(0, len(images), batch_size):
            rows = images[start : start + batch_size]
            part = None if labels is None else np.asarray(labels[start : start + batch_size])
            pixels = _uint8(rows, source)
            if mapped is not None:
                if np.may_share_memory(pixels, images):  # float maps were converted: already a copy
                    pixels = pixels.copy()
                mapped.madvise(mmap.MADV_DONTNEED)  # otherwise every page read stays resident
            yield Chunk(source=source, start=start, array=pixels, labels=part)

    for source, images, labels in arrays:
        yield from array_chunks(source, images, labels)
    for item, from_list in itertools.chain(
        ((item, False) for item in inputs), ((item, True) for item in listed)
    ):
        if item == STDIN and not from_list:
            data = sys.stdin.buffer.read()
            if not data:
                raise InputError("-: standard input is empty")
            array = _stdin_array(data)
            if array is not None:
                yield from array_chunks(STDIN, *array)
            else:
                yield from flush()
                yield Chunk(files=[STDIN], stdin=data)
            continue
        path = Path(item)
        if path.is_dir():
            paths = _walk(str(path), found)
        elif path.is_file() and path.suffix.lower() == ".parquet":
            yield from flush()
            yield from _parquet_chunks(path, batch_size, table_columns)
            continue
        elif path.is_file():
            paths = iter([path]) if path.suffix.lower() in IMAGE_SUFFIXES else None
            if paths is None:
                array = _array_file(path)
                if array is not None:
                    yield from array_chunks(str(path), *array)
                    continue
                if not from_list:
                    raise InputError(f"{path}: not an image, IDX, .npy or .npz file")
                paths = iter([path])  # its row says why it cannot be decoded
        elif glob.has_magic(item):
            paths = _glob(item)
        elif from_list:
            paths = iter([path])  # its row says it cannot be read
        else:
            raise InputError(f"{path}: no such file or directory")
        for image in paths:
            files.append(str(image))
            if len(files) >= batch_size:
                yield from flush()
    yield from flush()


def listed_inputs(files_from: str | None) -> Iterator[str]:
    """The paths listed in ``--files-from`` (a file, or ``-`` for standard input), lazily."""
    if files_from is not None:
        yield from _listed(files_from)
