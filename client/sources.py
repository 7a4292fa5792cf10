"""CLI inputs → batches: image files, directories, IDX, .npy/.npz, stdin, the MNIST test set."""

from __future__ import annotations

import gzip
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_serving.common.contract import IMAGE_PIXELS, IMAGE_SHAPE, pixels_from_unit_floats
from mnist_serving.common.idx import IdxError, parse_idx

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


class InputError(ValueError):
    """An input cannot be read as images."""


@dataclass
class Batch:
    """Images from one source: either a uint8 array or a list of encoded files."""

    source: str
    array: np.ndarray | None = None  # uint8 [N,28,28]
    files: list[Path] | None = None
    labels: np.ndarray | None = None
    per_file_source: bool = False

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files or [])


def _is_idx(data: bytes) -> bool:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)[:4]
        except OSError:
            return False
    return len(data) >= 4 and data[0] == 0 and data[1] == 0 and data[2] in (8, 9, 11, 12, 13, 14)


def _as_images(array: np.ndarray, source: str) -> np.ndarray:
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
        try:
            return pixels_from_unit_floats(array)
        except ValueError as exc:
            raise InputError(f"{source}: float images {exc}") from None
    raise InputError(f"{source}: dtype {array.dtype}; expected uint8, or float in [0, 1]")


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


def _from_bytes(data: bytes, source: str, path: Path | None = None) -> Batch | None:
    """An array batch if ``data`` is .npy, .npz or IDX; None if it is none of them."""
    if data[:6] == b"\x93NUMPY":
        return Batch(source, array=_as_images(np.load(io.BytesIO(data), allow_pickle=False), source))
    if data[:4] == b"PK\x03\x04" and source.endswith(".npz"):
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        images = next((a for k, a in arrays.items() if a.ndim in (2, 3) and a.size % IMAGE_PIXELS == 0), None)
        if images is None:
            raise InputError(f"{source}: no [N,28,28] array inside")
        labels = next((arrays[k] for k in ("labels", "y", "y_test", "y_train") if k in arrays), None)
        return Batch(source, array=_as_images(images, source), labels=labels)
    if _is_idx(data):
        try:
            array = parse_idx(data, source)
        except IdxError as exc:
            raise InputError(str(exc)) from None
        labels = _idx_labels_beside(path) if path is not None else None
        return Batch(source, array=_as_images(array, source), labels=labels)
    return None


def expand(inputs: list[str]) -> Iterator[Batch]:
    """Each input as one Batch; directories are walked recursively for image files."""
    pending_files: list[Path] = []
    for item in inputs:
        if item == "-":
            data = sys.stdin.buffer.read()
            if not data:
                raise InputError("-: standard input is empty")
            yield _from_bytes(data, "-") or _stdin_image(data)
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"{path}: no image files found")
            pending_files.extend(files)
            continue
        if not path.is_file():
            raise InputError(f"{path}: no such file or directory")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            pending_files.append(path)
            continue
        data = path.read_bytes()
        batch = _from_bytes(data, str(path), path)
        if batch is None:
            raise InputError(f"{path}: not an image, IDX, .npy or .npz file")
        yield batch
    if pending_files:
        yield Batch("files", files=pending_files, per_file_source=True)


_STDIN_IMAGES: dict[str, bytes] = {}


def _stdin_image(data: bytes) -> Batch:
    """An encoded image on stdin: kept in memory and sent as one file named '-'."""
    _STDIN_IMAGES["-"] = data
    return Batch("-", files=[Path("-")], per_file_source=True)


def read_file(path: Path) -> bytes:
    return _STDIN_IMAGES[str(path)] if str(path) in _STDIN_IMAGES else path.read_bytes()
