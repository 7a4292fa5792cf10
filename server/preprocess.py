"""The server's side of preprocessing: the shared pipeline, its errors named by request field."""

from __future__ import annotations

import numpy as np

from mnist_serving.common import preprocess
from mnist_serving.server.errors import InvalidInput


def decode(data: bytes, field: str = "image.encoded") -> np.ndarray:
    """Decode and preprocess one encoded image; any failure is InvalidInput naming ``field``."""
    return decode_sized(data, field)[0]


def decode_sized(data: bytes, field: str = "image.encoded") -> tuple[np.ndarray, int]:
    """``decode``, and how many pixels the image had (what a request's pixel budget counts)."""
    try:
        return preprocess.decode(data)
    except preprocess.ImageError as exc:
        raise InvalidInput(f"{field}: {exc}") from None
