"""What preprocessing promises callers: its version and its errors, with no decoder imported.

The client library names these without loading an image stack; ``common.preprocess`` does the work.
"""

from __future__ import annotations

from mnist_serving.common.contract import NO_DIGIT_FOUND

PREPROCESSING_VERSION = "3"
"""Bumped whenever the output for some input changes (1: min-max stretch, 2: the pipeline on
Pillow and numpy, 3: the same steps on OpenCV: its decoders, Otsu, components, area resizing)."""


class ImageError(ValueError):
    """The bytes are not an image this service can read; the message says why."""

    code = "INVALID_ARGUMENT"  # the status such an item gets, from the server and in process

    def item_message(self, field: str) -> str:
        """How this failure reads for one item of a request: the field, then why."""
        return f"{field}: {self}"


class NoDigitFound(ImageError):
    """The image is readable but blank, or nearly: there is no digit to classify."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{NO_DIGIT_FOUND} ({detail})")
