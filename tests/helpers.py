"""What many tests need: free loopback ports, images encoded as people save them, and a
wait on another process's state."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")


def free_port() -> int:
    """A port free on loopback now (for servers told a fixed port: restarts, load balancers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(
    pixels: np.ndarray | Image.Image, fmt: str = "PNG", mode: str | None = None, **save: object
) -> bytes:
    """An array or a PIL image as an encoded file (``mode``: converted first, e.g. "RGB")."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def digit_file(digit: np.ndarray, fmt: str = "PNG", size: int | None = None) -> bytes:
    """An MNIST digit as people save one: dark ink on white (``size``: resized to a square)."""
    image = Image.fromarray(255 - digit)
    if size is not None:
        image = image.resize((size, size))
    return encode(image, fmt)


def dark_on_light(digit: np.ndarray, size: tuple[int, int], pad: int = 20) -> np.ndarray:
    """A digit drawn dark on white paper, at another size, off-centre, with a margin."""
    big = np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.BICUBIC))
    canvas = np.zeros((size[1] + 2 * pad, size[0] + 3 * pad), dtype=np.uint8)
    canvas[pad : pad + size[1], 2 * pad : 2 * pad + size[0]] = big
    return 255 - canvas


def scan(value: int, side: int = 400) -> bytes:
    """A light page with a dark stroke: what a scanner sends."""
    page = Image.new("L", (side, side), 235)
    stroke = Image.new("L", (side // 8, side // 2), 20 + value)
    page.paste(stroke, (side // 3 + value, side // 4))
    return encode(page, "JPEG", quality=85)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # polling another process or system, not synchronising our own code
