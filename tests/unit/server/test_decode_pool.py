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
from tests.helpers import encode, scan

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


def _big_png(side: int = 4000) -> bytes:
    """A legitimate but large image (a smooth RGBA page, half a megabyte): about half a second
    of CPU to decode."""
    ramp = np.linspace(120, 240, side, dtype=np.float32)
    page = (ramp[None, :] * ramp[:, None] / 240).astype(np.uint8)
    page[side // 4 : 3 * side // 4, side // 2 - 40 : side // 2 + 40] = 10
    return encode(page, mode="RGBA")


def test_a_killed_worker_is_replaced_and_the_pool_goes_on():
    """As the OOM killer would: every worker killed with -9 between calls; the next call is
    answered in full by their replacements."""
    import os
    import signal

    pool = DecodePool(2, pixel_budget=10**9)
    pool.start()
    try:
        before = pool.pids()
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        results = asyncio.run(pool.decode(BLOBS, FIELDS))
        after = pool.pids()
    finally:
        pool.close()
    assert all(isinstance(r, np.ndarray) for r in results[:-1]) and isinstance(results[-1], InvalidInput)
    assert len(after) == 2 and not set(after) & set(before)


def test_an_image_over_the_decode_budget_fails_alone_and_its_worker_is_replaced():
    small = io.BytesIO()
    stroke = np.zeros((28, 28), np.uint8)
    stroke[6:22, 12:16] = 255
    Image.fromarray(stroke).save(small, format="PNG")  # a tenth of a millisecond to decode
    # The big one needs more CPU than the ten budgets of wall time (300 ms) a worker waiting
    # for a core is given: it overruns however busy or idle the machine is.
    pool = DecodePool(1, pixel_budget=10**12, decode_ms=30)
    pool.start()
    try:
        before = pool.pids()
        blobs = [_big_png(), small.getvalue()]
        results = asyncio.run(pool.decode(blobs, ["images[0].encoded", "images[1].encoded"]))
        after = pool.pids()
    finally:
        pool.close()
    assert isinstance(results[0], InvalidInput) and "took longer than 30 ms" in str(results[0])
    assert str(results[0]).startswith("images[0].encoded")
    assert np.array_equal(results[1], stroke)
    assert after != before  # the overrunning worker was stopped and replaced
