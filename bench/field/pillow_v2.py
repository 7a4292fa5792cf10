"""Preprocessing version 2, frozen: the pipeline on Pillow and numpy, before OpenCV.

The "before" column of the field table for version 3 (``mnist_serving.common.preprocess``):
the same steps, with Python loops (a union-find over component runs) and many small numpy
reductions. Kept only to measure against; nothing serves it.
"""

from __future__ import annotations

import functools
import io
import math
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_serving.common.contract import IMAGE_HEIGHT, IMAGE_SHAPE, IMAGE_WIDTH
from mnist_serving.common.preprocess_contract import ImageError, NoDigitFound

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

_TRANSPOSE = {  # EXIF orientation → what makes the stored pixels upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """One encoded image → (uint8 [28,28] digit, pixels in the image as stored)."""
    if not data:
        raise ImageError("empty; expected an encoded image (PNG, JPEG, ...)")
    if len(data) > MAX_ENCODED_BYTES:
        raise ImageError(f"{len(data)} bytes; at most {MAX_ENCODED_BYTES} allowed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size
                if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and width * height <= MAX_PIXELS):
                    raise ImageError(
                        f"image is {width}x{height}; at most {MAX_SIDE} per side and "
                        f"{MAX_PIXELS} pixels allowed"
                    )
                gray = load_gray(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:  # Pillow's own message only names an in-memory buffer
        raise ImageError(
            f"cannot decode image (not a recognised image format; expected {', '.join(FORMATS)})"
        ) from None
    except Exception as exc:  # whatever a decoder raises on hostile bytes is this image's problem
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {str(exc)[:200]})") from None
    return mnist_style(gray), width * height


def _already_mnist(gray: np.ndarray) -> bool:
    """28×28 with ink bright on a black frame: the model's own format (MNIST exported as PNG).
    Passed through as it is: cropping and rescaling it again could only blur it."""
    if gray.shape != IMAGE_SHAPE:
        return False
    frame = (gray[0].any(), gray[-1].any(), gray[:, 0].any(), gray[:, -1].any())
    return not any(frame) and float(gray.max()) >= MIN_INK_LEVEL


def load_gray(image: Image.Image) -> np.ndarray:
    """Steps 1-3: an open image → upright grayscale float32 [0,255] at working size."""
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if "exif" in image.info else 1
    image.seek(0)
    short = min(image.size)
    if image.format == "JPEG" and short > 2 * WORK_SIDE:
        scale = WORK_SIDE / short  # libjpeg decodes at 1/2, 1/4 or 1/8 directly: no wasted work
        image.draft("L", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    gray = image.convert("L") if image.mode != "L" else image
    factor = min(gray.size) // WORK_SIDE
    if factor >= 2:
        gray = gray.reduce(factor)  # box filter: keeps thin strokes as faint lines
    if orientation in _TRANSPOSE:
        gray = gray.transpose(_TRANSPOSE[orientation])
    return np.asarray(gray, dtype=np.float32)


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """Steps 4-10: grayscale [0,255] of any size → uint8 [28,28], ink bright on black.

    Raises NoDigitFound when there is no ink to speak of.
    """
    if _already_mnist(gray):
        return gray.astype(np.uint8)
    ink, noise = _ink_signal(gray)
    threshold = max(_otsu(ink), 3.0 * noise, MIN_INK_LEVEL / 2)
    mask = ink > threshold
    if not mask.any():
        raise NoDigitFound("no ink stands out from the background")
    gate, (top, bottom, left, right) = _digit_region(ink, mask)
    strong = _quantile(ink[gate & mask], 0.9)
    if strong < MIN_INK_LEVEL or strong < 6.0 * noise:
        raise NoDigitFound(f"ink contrast {strong:.0f} of 255 against noise {noise:.1f}")
    span = max(bottom - top, right - left)
    if span < max(2, MIN_DIGIT_FRACTION * min(gray.shape)):
        raise NoDigitFound(f"largest mark is {span} px in a {gray.shape[1]}x{gray.shape[0]} image")
    floor = threshold / 2  # haze and JPEG ringing below half the threshold are paper
    # Soft edges stay (anti-aliasing, as MNIST has); only what lies outside the kept components goes.
    region = ink[top:bottom, left:right] * gate[top:bottom, left:right]
    digit = np.clip((region - floor) / max(strong - floor, 1.0), 0.0, 1.0)
    return _centre(digit)


def _ink_signal(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """Steps 4-5: how much each pixel departs from the paper, towards the ink's side (≥ 0),
    and the paper's noise level in grey levels."""
    height, width = gray.shape
    if min(height, width) < SMALL_SIDE:  # one level: the border's median
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        level = _quantile(border, 0.5)
        residual = gray - level
        noise = _noise_level(residual)
        return np.maximum(level - gray if _dark_ink(residual, noise) else residual, 0), noise
    blocks = _sorted_blocks(gray)
    residual = gray - _background(blocks, 0.5, gray.shape)
    noise = _noise_level(residual)
    dark = _dark_ink(residual, noise)
    # Now that the ink's side is known, the paper is the other side of each block: a block
    # mostly covered by a bold stroke still shows paper in its lightest quarter.
    background = _background(blocks, 0.75 if dark else 0.25, gray.shape)
    return np.maximum(background - gray if dark else gray - background, 0), noise


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
    blocks (so a block that is mostly ink cannot pass for paper), smoothed to every pixel."""
    rows, cols, count = blocks.shape
    grid = blocks[:, :, int(quantile * (count - 1))]
    ring = grid[np.clip(np.arange(-1, rows + 1), 0, rows - 1)][
        :, np.clip(np.arange(-1, cols + 1), 0, cols - 1)
    ]
    neighbours = np.stack([ring[r : r + rows, c : c + cols] for r in range(3) for c in range(3)])
    grid = np.sort(neighbours, axis=0)[4]
    return _upsample(rows, shape[0]) @ grid @ _upsample(cols, shape[1]).T


@functools.lru_cache(maxsize=256)
def _upsample(points: int, size: int) -> np.ndarray:
    """[size, points] weights of linear interpolation between evenly spread block centres."""
    centres = (np.arange(points) + 0.5) * size / points
    position = np.clip(np.interp(np.arange(size) + 0.5, centres, np.arange(points)), 0, points - 1)
    lower = np.minimum(position.astype(int), max(points - 2, 0))
    frac = position - lower
    weights = np.zeros((size, points), np.float32)
    weights[np.arange(size), lower] = 1 - frac
    if points > 1:
        weights[np.arange(size), lower + 1] += frac
    return weights


def _quantile(values: np.ndarray, q: float) -> float:
    """One order statistic. Sorting, because numpy's partition slows down badly on the many
    equal values of a scan's paper, and np.percentile's wrappers outweigh small arrays."""
    k = min(len(values) - 1, int(q * len(values)))
    return float(np.sort(values)[k])


def _noise_level(values: np.ndarray) -> float:
    """Robust spread (scaled median absolute deviation) of the paper, i.e. of most pixels."""
    sample = values.ravel()[:: max(1, values.size // 2000)]
    return 1.4826 * _quantile(np.abs(sample - _quantile(sample, 0.5)), 0.5)


def _otsu(ink: np.ndarray) -> float:
    """Otsu's threshold on the ink signal's histogram (256 bins of one grey level)."""
    hist = np.bincount(np.clip(ink, 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(hist)
    mass = np.cumsum(hist * levels)
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - total * mass) ** 2 / (weight * (total - weight))
    between[~np.isfinite(between)] = 0
    return float(np.argmax(between)) + 0.5


def _digit_region(ink: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Steps 8-9: where the kept components lie (a pixel gate, one cell wider than their
    cells, so stroke edges below the threshold stay), and the box of their ink."""
    height, width = mask.shape
    cell = max(1, -(-min(height, width) // 24))  # about 24 cells on the short side
    rows, cols = -(-height // cell), -(-width // cell)
    weights = np.zeros((rows * cell, cols * cell), np.float32)
    weights[:height, :width] = np.where(mask, ink, 0)
    grid = weights.reshape(rows, cell, cols, cell).sum(axis=(1, 3))
    components = _components(grid > 0, grid)
    if len(components) == 1:  # the usual clean image: the mask is the digit
        gate = np.ones_like(mask)
    else:
        main = max(components, key=lambda c: c.mass)
        reach = 0.5 * max(main.bottom - main.top, main.right - main.left)
        cells = np.zeros((rows, cols), bool)
        for c in components:
            if c is main or (c.mass >= COMPONENT_SHARE * main.mass and c.gap_to(main) <= reach):
                for row, start, end in c.runs:
                    cells[row, start:end] = True
        grown = cells.copy()  # one cell wider, so the edges of strokes stay
        grown[1:] |= cells[:-1]
        grown[:-1] |= cells[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        gate = np.repeat(np.repeat(grown, cell, axis=0), cell, axis=1)[:height, :width]
        core = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)[:height, :width] & mask
        rows_any, cols_any = core.any(axis=1), core.any(axis=0)
        return gate, _box(rows_any, cols_any)
    rows_any, cols_any = mask.any(axis=1), mask.any(axis=0)
    return gate, _box(rows_any, cols_any)


def _box(rows_any: np.ndarray, cols_any: np.ndarray) -> tuple[int, int, int, int]:
    height, width = len(rows_any), len(cols_any)
    top, bottom = int(rows_any.argmax()), height - int(rows_any[::-1].argmax())
    left, right = int(cols_any.argmax()), width - int(cols_any[::-1].argmax())
    return top, bottom, left, right


class _Component:
    """Connected runs of ink cells: their total ink and bounding box (in cells)."""

    __slots__ = ("runs", "mass", "top", "bottom", "left", "right")

    def __init__(self) -> None:
        self.runs: list[tuple[int, int, int]] = []
        self.mass = 0.0
        self.top = self.left = 1 << 30
        self.bottom = self.right = -1

    def add(self, row: int, start: int, end: int, mass: float) -> None:
        self.runs.append((row, start, end))
        self.mass += mass
        self.top, self.bottom = min(self.top, row), max(self.bottom, row + 1)
        self.left, self.right = min(self.left, start), max(self.right, end)

    def gap_to(self, other: _Component) -> int:
        dy = max(other.top - self.bottom, self.top - other.bottom, 0)
        dx = max(other.left - self.right, self.left - other.right, 0)
        return max(dy, dx)


def _components(cells: np.ndarray, mass: np.ndarray) -> list[_Component]:
    """8-connected components by row runs and union-find: a digit has a few dozen runs."""
    rows, cols = cells.shape
    padded = np.zeros((rows, cols + 2), np.int8)
    padded[:, 1:-1] = cells
    edges = np.diff(padded, axis=1)
    run_row, run_start = np.nonzero(edges == 1)
    run_end = np.nonzero(edges == -1)[1]
    cumulative = np.zeros((rows, cols + 1), np.float64)
    np.cumsum(mass, axis=1, out=cumulative[:, 1:])
    run_mass = cumulative[run_row, run_end] - cumulative[run_row, run_start]
    r_row, r_start, r_end = run_row.tolist(), run_start.tolist(), run_end.tolist()
    parent = list(range(len(r_row)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []  # runs of the row above
    current: list[int] = []
    row = -1
    for i, r in enumerate(r_row):
        if r != row:
            previous = current if r == row + 1 else []
            current, row = [], r
        for j in previous:  # touching, diagonals included
            if r_start[j] <= r_end[i] and r_start[i] <= r_end[j]:
                a, b = find(i), find(j)
                if a != b:
                    parent[a] = b
        current.append(i)
    roots = [find(i) for i in range(len(r_row))]
    groups: dict[int, _Component] = {}
    for i, root in enumerate(roots):
        component = groups.get(root)
        if component is None:
            component = groups[root] = _Component()
        component.add(r_row[i], r_start[i], r_end[i], float(run_mass[i]))
    return list(groups.values())


def _centre(digit: np.ndarray) -> np.ndarray:
    """Step 10: fit [0,1] ink into 20×20 keeping the aspect; centre of mass at 28×28's centre."""
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    pixels = (digit * 255).astype(np.uint8)
    if (new_h, new_w) == (height, width):  # already 20 px (MNIST-sized input): nothing to scale
        box = pixels.astype(np.float32)
    else:
        resized = Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
        box = np.asarray(resized, dtype=np.float32)
    total = box.sum()
    if total <= 0:
        raise NoDigitFound("the ink vanished when scaled to 20x20")
    cy = (box.sum(1) * np.arange(new_h)).sum() / total
    cx = (box.sum(0) * np.arange(new_w)).sum() / total
    top = min(max(int(round(IMAGE_HEIGHT / 2 - cy)), 0), IMAGE_HEIGHT - new_h)
    left = min(max(int(round(IMAGE_WIDTH / 2 - cx)), 0), IMAGE_WIDTH - new_w)
    canvas = np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = box.astype(np.uint8)
    return canvas
