"""The decode pool: same answers as decoding inline, a pixel budget, deadlines; processes and threads."""

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from mnist_serving.server.decode_pool import DecodePool
from mnist_serving.server.errors import DeadlineExpired, InvalidInput
from mnist_serving.server.preprocess import decode_sized


def scan(value: int, side: int = 400) -> bytes:
    """A light page with a dark stroke: what a scanner sends."""
    page = Image.new("L", (side, side), 235)
    stroke = Image.new("L", (side // 8, side // 2), 20 + value)
    page.paste(stroke, (side // 3 + value, side // 4))
    buffer = io.BytesIO()
    page.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


BLOBS = [scan(i % 7) for i in range(40)] + [b"not an image"]
FIELDS = [f"images[{i}].encoded" for i in range(len(BLOBS))]


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_pool_answers_exactly_as_inline_decoding(kind):
    pool = DecodePool(2, pixel_budget=10**9, kind=kind)
    pool.start()
    try:
        results = asyncio.run(pool.decode(BLOBS, FIELDS))
    finally:
        pool.close()
    for blob, field, result in zip(BLOBS[:-1], FIELDS, results, strict=False):
        assert np.array_equal(result, decode_sized(blob, field)[0])
    assert isinstance(results[-1], InvalidInput) and str(results[-1]).startswith("images[40].encoded")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_request_over_its_pixel_budget_fails_as_a_whole(workers):
    pool = DecodePool(workers, pixel_budget=400 * 400 * 10)
    pool.start()
    try:
        with pytest.raises(InvalidInput, match="more than 1,600,000 pixels"):
            asyncio.run(pool.decode(BLOBS, FIELDS))
        assert len(asyncio.run(pool.decode(BLOBS[:10], FIELDS[:10]))) == 10  # within budget
    finally:
        pool.close()


def test_an_expired_deadline_stops_handing_out_work():
    pool = DecodePool(1, pixel_budget=10**9)
    pool.start()
    try:
        with pytest.raises(DeadlineExpired):
            asyncio.run(pool.decode(BLOBS * 5, FIELDS * 5, deadline=time.monotonic()))
    finally:
        pool.close()
