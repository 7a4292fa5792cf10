"""Encoded images → the 28×28 digit the model was trained on, for photos, scans and screenshots.

Used by the server (encoded images in requests) and by clients that decode before sending,
so both see the same pixels; ``PREPROCESSING_VERSION`` tells them apart when they differ.
OpenCV does the pixel work (decoding, area reduction of big images, Otsu, connected
components, moments); Pillow reads the headers of formats other than PNG (size, EXIF
orientation) before any decoder runs, and fits the digit into 20×20. No Python loop runs
over pixels, rows or components. The steps, in order (each pinned by a test on the case it
exists for); a 28×28 image with ink bright on a black frame is already in the model's
format and passes through unchanged:

1. decode: only PNG, JPEG, BMP, GIF, TIFF and WebP, known by their first bytes; the size is
   checked from the header; big JPEGs are decoded at 1/2, 1/4 or 1/8 size straight from the
   DCT, big images area-reduced by whole factors to about ``WORK_SIDE`` pixels on the short
   side, which still leaves a small digit its strokes;
2. orientation: the EXIF orientation tag, applied once here (decoders are told to ignore it),
   as phones store photos sideways;
3. transparency: composited onto white;
4. background: the paper's own level, block by block, so uneven light, off-white or tinted
   paper and JPEG haze flatten to zero instead of counting as ink;
5. colour: ink is what departs from the paper; dark or light ink is the side with more of it;
6. threshold: Otsu on the flattened ink signal, never below the paper's noise;
7. blank: too little ink, or ink lost in the noise, is "no digit found", not a guess;
8. noise: connected ink components on a coarse grid; only the large one(s) near the digit count;
9. framing: crop to the kept components, so a small digit in a big frame fills the box;
10. MNIST style: fit into 20×20 keeping the aspect (Pillow's antialiased Lanczos: measured
    against OpenCV's area and Lanczos resizing on the field set), shifted so its centre of
    mass is at the centre of 28×28.
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_serving.common.contract import IMAGE_HEIGHT, IMAGE_SHAPE, IMAGE_WIDTH
from mnist_serving.common.preprocess_contract import PREPROCESSING_VERSION, ImageError, NoDigitFound

__all__ = ["PREPROCESSING_VERSION", "ImageError", "NoDigitFound", "decode"]


FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
"""The only decoders an image reaches: whatever else Pillow can open (DDS, PSD, ...) is refused."""
MAX_ENCODED_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 16 * 1024 * 1024  # per image, checked before decoding
MAX_SIDE = 8192
WORK_SIDE = 80  # short side the pipeline works at (a 20%-high digit keeps ≥ 16 px)
DIGIT_BOX = 20  # MNIST: the digit fits 20×20, centred by mass in 28×28
SMALL_SIDE = 64  # below this, one background level (the border's) instead of blocks
MIN_INK_LEVEL = 24.0  # grey levels of 255: ink fainter than this against its paper is no ink
MIN_DIGIT_FRACTION = 0.06  # the digit spans at least this share of the image's short side
COMPONENT_SHARE = 0.1  # components with less ink than this share of the largest are noise

_ORIENT = {  # EXIF orientation → what makes the stored pixels upright (as ImageOps.exif_transpose)
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: np.transpose,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).T,
    8: np.rot90,
}
_SIGNATURES = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "BMP": (b"BM",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}
_EXIF_ORIENTATION = 0x0112

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# OpenCV's own limits, a second line behind the header check (read when cv2 first decodes).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_WIDTH", str(MAX_SIDE))
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_HEIGHT", str(MAX_SIDE))
# A broken file is that item's error; OpenCV's own warning about it would only be noise on stderr.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
import cv2  # noqa: E402  (after its limits are set)

# One thread, in every process that decodes (decode workers import this module): on images
# this small OpenCV's parallel loops cost more in hand-offs than they save (a 28×28 digit took
# twice as long with its default threads), and a pool of N workers must use N cores, not N
# times OpenCV's own threads.
cv2.setNumThreads(1)

_REDUCED = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}
_SQUARE = np.ones((3, 3), np.uint8)


def warm_up() -> None:
    """Register every decoder now and decode once: a worker's first hostile image (a format
    Pillow only identifies after loading all its plugins) must not pay for the imports
    against its decode budget."""
    Image.init()
    for extension in (".png", ".jpg"):
        ok, blank = cv2.imencode(extension, np.full((8, 8), 255, np.uint8))
        try:
            decode(blank.tobytes())
        except NoDigitFound:
            pass


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """One encoded image → (uint8 [28,28] digit, pixels in the image as stored)."""
    gray, pixels = load_gray(data)
    return mnist_style(gray), pixels


def load_gray(data: bytes) -> tuple[np.ndarray, int]:
    """Steps 1-3: encoded bytes → upright grayscale float32 [0,255] at working size, and the
    pixels of the image as stored. The format is known and the size checked from the header
    before any decoder runs."""
    if not data:
        raise ImageError("empty; expected an encoded image (PNG, JPEG, ...)")
    if len(data) > MAX_ENCODED_BYTES:
        raise ImageError(f"{len(data)} bytes; at most {MAX_ENCODED_BYTES} allowed")
    kind = _format(data)
    if kind is None:
        raise ImageError(
            f"cannot decode image (not a recognised image format; expected {', '.join(FORMATS)})"
        )
    try:
        width, height, orientation, alpha = _header(data, kind)
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and width * height <= MAX_PIXELS):
            raise ImageError(
                f"image is {width}x{height}; at most {MAX_SIDE} per side and {MAX_PIXELS} pixels allowed"
            )
        gray = _decode_pixels(data, kind, min(width, height), alpha)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:  # Pillow's own message only names an in-memory buffer
        raise ImageError(f"cannot decode image (not a valid {kind} file)") from None
    except Exception as exc:  # whatever a decoder raises on hostile bytes is this image's problem
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {str(exc)[:200]})") from None
    if orientation in _ORIENT:
        gray = _ORIENT[orientation](gray)
    return gray, width * height


def _format(data: bytes) -> str | None:
    """The format the first bytes announce, if it is one of ``FORMATS``."""
    head = data[:12]
    for kind, signatures in _SIGNATURES.items():
        if head.startswith(signatures):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _header(data: bytes, kind: str) -> tuple[int, int, int, bool]:
    """(width, height, EXIF orientation, has transparency) from the header alone. A PNG's
    header is at fixed places; other formats are read by Pillow, which stops at the header."""
    if kind == "PNG" and len(data) >= 33 and data[12:16] == b"IHDR" and b"eXIf" not in data:
        width, height, _depth, colour = struct.unpack(">IIBB", data[16:26])
        return width, height, 1, colour in (4, 6) or b"tRNS" in data
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=(kind,)) as image:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if "exif" in image.info else 1
            alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return image.width, image.height, orientation, alpha


def _decode_pixels(data: bytes, kind: str, short: int, alpha: bool) -> np.ndarray:
    """OpenCV decodes (big JPEGs at 1/2, 1/4 or 1/8 size straight from the DCT), ignoring the
    EXIF tag (applied once, by the caller); transparency is composited onto white; big images
    are area-reduced by a whole factor to about ``WORK_SIDE`` on the short side."""
    buffer = np.frombuffer(data, np.uint8)
    if alpha:
        flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    elif kind == "JPEG" and short > 2 * WORK_SIDE:
        flags = _REDUCED[min(8, 1 << int(math.log2(short // WORK_SIDE)))]
    else:
        flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(buffer, flags)
    if pixels is None or pixels.size == 0:
        raise ImageError(f"cannot decode image (not a valid {kind} file)")
    if pixels.dtype != np.uint8:  # 16-bit PNG or TIFF
        pixels = (pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else cv2.convertScaleAbs(pixels)
    if pixels.ndim == 3:
        pixels = _flatten(pixels)
    factor = min(pixels.shape) // WORK_SIDE
    if factor >= 2:
        # Box filter (thin strokes stay, as faint lines) by Pillow's ``reduce``: a part block at
        # the right or bottom edge is the mean of the pixels it has. OpenCV's area resizing to
        # the rounded-up size stretches the blocks to fill it instead, shifting and blurring
        # the image by up to a pixel at the far edge.
        pixels = np.asarray(Image.fromarray(pixels).reduce(factor))
    return pixels.astype(np.float32)


def _flatten(pixels: np.ndarray) -> np.ndarray:
    """Colour (BGR) or with alpha (BGRA, gray+alpha) → gray, transparent parts white."""
    channels = pixels.shape[2]
    if channels == 2:
        gray, alpha = pixels[:, :, 0], pixels[:, :, 1]
    elif channels == 4:
        gray, alpha = cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY), pixels[:, :, 3]
    else:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    weight = alpha.astype(np.float32) / 255.0
    return np.rint(gray * weight + 255.0 * (1.0 - weight)).astype(np.uint8)


def _already_mnist(gray: np.ndarray) -> bool:
    """28×28 with ink bright on a black frame: the model's own format (MNIST exported as PNG).
    Passed through as it is: cropping and rescaling it again could only blur it."""
    if gray.shape != IMAGE_SHAPE or gray[0, 0] or gray[-1, -1] or gray[0].any() or gray[-1].any():
        return False  # (a corner first: the common dark-on-white image is ruled out at once)
    return not (gray[:, 0].any() or gray[:, -1].any()) and float(gray.max()) >= MIN_INK_LEVEL


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """Steps 4-10: grayscale [0,255] of any size → uint8 [28,28], ink bright on black.

    Raises NoDigitFound when there is no ink to speak of.
    """
    if _already_mnist(gray):
        return gray.astype(np.uint8)
    ink, noise = _ink_signal(gray)
    otsu, _ = cv2.threshold(ink.astype(np.uint8), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    threshold = max(otsu + 0.5, 3.0 * noise, MIN_INK_LEVEL / 2)
    mask = ink > threshold
    if not np.count_nonzero(mask):
        raise NoDigitFound("no ink stands out from the background")
    gate, (top, bottom, left, right) = _digit_region(ink, mask)
    kept = ink[gate & mask] if gate is not None else ink[mask]
    strong = _quantile(kept, 0.9, copy=False)  # ``kept`` is a new array already
    if strong < MIN_INK_LEVEL or strong < 6.0 * noise:
        raise NoDigitFound(f"ink contrast {strong:.0f} of 255 against noise {noise:.1f}")
    span = max(bottom - top, right - left)
    if span < max(2, MIN_DIGIT_FRACTION * min(gray.shape)):
        raise NoDigitFound(f"largest mark is {span} px in a {gray.shape[1]}x{gray.shape[0]} image")
    floor = threshold / 2  # haze and JPEG ringing below half the threshold are paper
    # Soft edges stay (anti-aliasing, as MNIST has); only what lies outside the kept components goes.
    region = ink[top:bottom, left:right]
    if gate is not None:
        region = region * gate[top:bottom, left:right]
    scale = 255.0 / max(strong - floor, 1.0)
    digit = cv2.convertScaleAbs(np.maximum(region - floor, 0), alpha=scale)  # saturates at 255
    return _centre(digit)


def _ink_signal(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """Steps 4-5: how much each pixel departs from the paper, towards the ink's side (≥ 0),
    and the paper's noise level in grey levels."""
    height, width = gray.shape
    if min(height, width) < SMALL_SIDE:
        return _ink_signal_small(gray)
    blocks = _sorted_blocks(gray)
    residual = gray - _background(blocks, 0.5, gray.shape)
    noise = _noise_level(residual)
    dark = _dark_ink(residual, noise)
    # Now that the ink's side is known, the paper is the other side of each block: a block
    # mostly covered by a bold stroke still shows paper in its lightest quarter.
    background = _background(blocks, 0.75 if dark else 0.25, gray.shape)
    return np.maximum(background - gray if dark else gray - background, 0), noise


def _ink_signal_small(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """A small image has one paper level, its border's median. Everything comes from the
    pixels sorted once: the noise (the median absolute deviation, which a shift of level
    does not change) and which side the ink is on (the sums of the sorted tails beyond the
    noise). A few whole-array operations, as a 28×28 image is mostly per-call overhead."""
    values = gray.ravel()
    border = values[_border_index(*gray.shape)]
    border.sort()
    level = border.item(border.size // 2)  # Python floats from here: numpy scalars are slow
    ordered = np.sort(values)
    middle = values.size // 2
    deviation = np.abs(values - ordered.item(middle))
    deviation.sort()  # partition is many times slower on the paper's many equal values
    noise = 1.4826 * deviation.item(middle)
    spread = 3.0 * noise + 4.0
    low, high = level - spread, level + spread
    # Pixels darker than the paper by more than the spread, and lighter (values are whole grey
    # levels and the spread is at least 4: no value sits exactly on either bound that matters).
    below, above = np.searchsorted(ordered, (low, high)).tolist()
    dark_excess = low * below - ordered[:below].sum().item()
    light_excess = ordered[above:].sum().item() - high * (values.size - above)
    ink = level - gray if dark_excess >= light_excess else gray - level
    return np.maximum(ink, 0, out=ink), noise


@functools.lru_cache(maxsize=64)
def _border_index(height: int, width: int) -> np.ndarray:
    """Flat indices of an image's border pixels (each once)."""
    index = np.arange(height * width).reshape(height, width)
    return np.concatenate((index[0], index[-1], index[1:-1, 0], index[1:-1, -1]))


def _dark_ink(residual: np.ndarray, noise: float) -> bool:
    """Ink is the side that departs further from the paper (beyond its noise), in total."""
    spread = 3.0 * noise + 4.0
    return bool(np.maximum(-residual - spread, 0).sum() >= np.maximum(residual - spread, 0).sum())


def _sorted_blocks(gray: np.ndarray) -> np.ndarray:
    """The image in square blocks about a sixth of its short side, each block's values sorted
    (a remainder of under one block at the right and bottom edges is left out)."""
    height, width = gray.shape
    block = max(8, min(height, width) // 6)
    rows, cols = height // block, width // block
    blocks = gray[: rows * block, : cols * block].reshape(rows, block, cols, block)
    return np.sort(blocks.transpose(0, 2, 1, 3).reshape(rows, cols, -1), axis=2)


def _background(blocks: np.ndarray, quantile: float, shape: tuple[int, int]) -> np.ndarray:
    """The paper's level: a quantile of each block, the median of each 3×3 neighbourhood of
    blocks (so a block that is mostly ink cannot pass for paper; edges replicated), then
    linear interpolation between the block centres to every pixel."""
    count = blocks.shape[2]
    grid = np.ascontiguousarray(blocks[:, :, int(quantile * (count - 1))], dtype=np.float32)
    grid = cv2.medianBlur(grid, 3)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _quantile(values: np.ndarray, q: float, copy: bool = True) -> float:
    """One order statistic. Sorting, because numpy's partition slows down badly on the many
    equal values of a scan's paper, and np.percentile's wrappers outweigh small arrays.
    ``copy=False`` sorts ``values`` in place."""
    k = min(len(values) - 1, int(q * len(values)))
    ordered = values.copy() if copy else values
    ordered.sort()
    return ordered.item(k)


def _noise_level(values: np.ndarray) -> float:
    """Robust spread (scaled median absolute deviation) of the paper, i.e. of most pixels."""
    sample = values.ravel()[:: max(1, values.size // 2000)]
    return 1.4826 * _quantile(np.abs(sample - _quantile(sample, 0.5)), 0.5)


def _digit_region(ink: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray | None, tuple[int, int, int, int]]:
    """Steps 8-9: where the kept components lie (a pixel gate, one cell wider than their
    cells, so stroke edges below the threshold stay; None: everything, one component), and
    the box of their ink. Components are found on a grid of about 24 cells on the short side."""
    height, width = mask.shape
    cell = max(1, -(-min(height, width) // 24))
    rows, cols = -(-height // cell), -(-width // cell)
    weights = ink * mask
    if rows * cell != height or cols * cell != width:
        weights = cv2.copyMakeBorder(
            weights, 0, rows * cell - height, 0, cols * cell - width, cv2.BORDER_CONSTANT
        )
    grid = cv2.resize(weights, (cols, rows), interpolation=cv2.INTER_AREA) if cell > 1 else weights
    occupied = (grid > 0).view(np.uint8)
    # The usual clean image is one component, the mask its digit; counting the components alone
    # costs half as much as labelling them with their statistics.
    if cv2.connectedComponents(occupied, connectivity=8)[0] <= 2:
        return None, _box(mask)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(occupied, connectivity=8)
    mass = np.bincount(labels.ravel(), weights=grid.ravel(), minlength=count)[1:]
    left_, top_, w_, h_ = (stats[1:, i] for i in range(4))
    main = int(np.argmax(mass))
    reach = 0.5 * max(h_[main], w_[main])
    gap = np.maximum(
        np.maximum(top_ - (top_[main] + h_[main]), top_[main] - (top_ + h_)),
        np.maximum(left_ - (left_[main] + w_[main]), left_[main] - (left_ + w_)),
    )
    keep = (mass >= COMPONENT_SHARE * mass[main]) & (np.maximum(gap, 0) <= reach)
    keep[main] = True
    cells = np.isin(labels, np.flatnonzero(keep) + 1).view(np.uint8)
    grown = cv2.dilate(cells, _SQUARE)  # one cell wider, so the edges of strokes stay
    gate = cv2.resize(grown, (cols * cell, rows * cell), interpolation=cv2.INTER_NEAREST)[:height, :width]
    core = cv2.resize(cells, (cols * cell, rows * cell), interpolation=cv2.INTER_NEAREST)[:height, :width]
    return gate.view(bool), _box(core.view(bool) & mask)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the set pixels."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return y, y + h, x, x + w


def _centre(digit: np.ndarray) -> np.ndarray:
    """Step 10: fit the uint8 ink into 20×20 keeping the aspect, then shift it by whole pixels
    so that its centre of mass (OpenCV's moments) is at the centre of 28×28 (MNIST's recipe;
    a whole-pixel shift is a copy, where a sub-pixel warp would blur)."""
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    box = digit
    if (new_h, new_w) != (height, width) and scale >= 1 / 1.5:
        # Enlarged or barely reduced (a 28×28 digit's own box): no antialiasing to speak of.
        box = cv2.resize(digit, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4)
    elif (new_h, new_w) != (height, width):
        # Pillow's Lanczos is antialiased (its kernel widens with the reduction), which OpenCV's
        # is not; area resizing here cost thin pen strokes 0.6 points in the field set.
        image = Image.frombuffer("L", (width, height), np.ascontiguousarray(digit), "raw", "L", 0, 1)
        resized = image.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
        box = np.frombuffer(resized.tobytes(), np.uint8).reshape(new_h, new_w)
    moments = cv2.moments(box)  # uint8: always read as an image, never as a list of points
    if moments["m00"] <= 0:
        raise NoDigitFound("the ink vanished when scaled to 20x20")
    cx, cy = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]
    left = min(max(round(IMAGE_WIDTH / 2 - cx), 0), IMAGE_WIDTH - new_w)
    top = min(max(round(IMAGE_HEIGHT / 2 - cy), 0), IMAGE_HEIGHT - new_h)
    canvas = np.zeros(IMAGE_SHAPE, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = box
    return canvas
