"""Preprocessing version 1, frozen: the "before" column of the field table.

What the server did before the field work: min-max stretch, fixed 0.2 ink threshold, no EXIF,
no background estimate. Kept only to measure against; nothing serves it.

grayscale; invert when the background is light; crop to the ink; scale to fit 20×20
keeping the aspect ratio; paste into 28×28 so the centre of mass is at the centre.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_serving.common.contract import IMAGE_HEIGHT, IMAGE_SHAPE, IMAGE_WIDTH

MAX_ENCODED_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 16 * 1024 * 1024  # per image, checked before decoding
MAX_SIDE = 8192
INK_THRESHOLD = 0.2  # fraction of the intensity range that counts as ink


class InvalidInput(ValueError):
    """Why version 1 refused an image."""


def decode(data: bytes, field: str = "image.encoded") -> np.ndarray:
    """Decode and preprocess one encoded image; any failure is InvalidInput naming ``field``."""
    return decode_sized(data, field)[0]


def decode_sized(data: bytes, field: str = "image.encoded") -> tuple[np.ndarray, int]:
    """``decode``, and how many pixels the image had (what a request's pixel budget counts)."""
    if not data:
        raise InvalidInput(f"{field}: empty; expected an encoded image (PNG, JPEG, ...)")
    if len(data) > MAX_ENCODED_BYTES:
        raise InvalidInput(f"{field}: {len(data)} bytes; at most {MAX_ENCODED_BYTES} allowed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if (
                    width < 1
                    or height < 1
                    or width > MAX_SIDE
                    or height > MAX_SIDE
                    or width * height > MAX_PIXELS
                ):
                    raise InvalidInput(
                        f"{field}: image is {width}x{height}; at most {MAX_SIDE} per side and "
                        f"{MAX_PIXELS} pixels allowed"
                    )
                image.seek(0)
                gray = _to_gray(image)
                pixels = width * height
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"{field}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:  # Pillow's own message only names an in-memory buffer
        raise InvalidInput(f"{field}: cannot decode image (not a recognised image format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInput(f"{field}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return mnist_style(gray), pixels


def _to_gray(image: Image.Image) -> np.ndarray:
    """Grayscale float array in [0,1]; transparency is composited onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    return gray / 255.0


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """Grayscale [0,1] of any size → uint8 [28,28], ink bright on black, centred by mass."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if float(np.median(border)) > 0.5:  # light background: dark ink on paper
        gray = 1.0 - gray
    low, high = float(gray.min()), float(gray.max())
    if high - low < 1e-6:
        return np.zeros(IMAGE_SHAPE, dtype=np.uint8)  # blank image: nothing to centre
    gray = (gray - low) / (high - low)
    ink = gray > INK_THRESHOLD
    rows, cols = np.nonzero(ink)
    cropped = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = cropped.shape
    scale = 20.0 / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = Image.fromarray((cropped * 255).astype(np.uint8)).resize(
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    digit = np.asarray(resized, dtype=np.float32)
    total = digit.sum()
    if total <= 0:
        return np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    cy = (digit.sum(1) * np.arange(new_h)).sum() / total
    cx = (digit.sum(0) * np.arange(new_w)).sum() / total
    top = int(round(14 - cy))
    left = int(round(14 - cx))
    top = min(max(top, 0), IMAGE_HEIGHT - new_h)
    left = min(max(left, 0), IMAGE_WIDTH - new_w)
    canvas = np.zeros(IMAGE_SHAPE, dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = digit
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
