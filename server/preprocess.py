"""The server's side of preprocessing: the shared pipeline, its errors named by request field."""

from __future__ import annotations

import numpy as np

from mnist_serving.common import preprocess
from mnist_serving.server.errors import InvalidInput


def decode_sized(data: bytes, field: str = "image.encoded") -> tuple[np.ndarray, int]:
    """Decode and preprocess one encoded image, and how many pixels it had (what a request's
    pixel budget counts); any failure is InvalidInput naming ``field``."""
    try:
        return preprocess.decode(data)
    except preprocess.ImageError as exc:
        raise InvalidInput(exc.item_message(field)) from None
