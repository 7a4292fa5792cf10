"""The decode pool: same answers as decoding inline, a pixel budget, deadlines; processes and threads."""

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from mnist_serving.server import decode_pool
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


class _ScriptedConnection:
    """A worker's end as the feeder sees it: takes the chunk, then answers each image from a
    script, where "dies" is the worker dying on that image."""

    def __init__(self, answers: list) -> None:
        self.answers, self.acknowledged = list(answers), False

    def send(self, task: object) -> None:
        pass

    def poll(self, timeout: float = 0) -> bool:
        return True

    def recv(self) -> object:
        if not self.acknowledged:
            self.acknowledged = True
            return None
        answer = self.answers.pop(0)
        if answer == "dies":
            raise EOFError
        return answer


class _ScriptedWorker(decode_pool._Worker):
    """A feeder whose every replacement worker follows the next script."""

    def __init__(self, scripts: list[list]) -> None:
        pool = type("Pool", (), {"decode_seconds": 1.0, "spawn": lambda _, worker: worker._next()})()
        super().__init__(pool, 0)
        self.scripts, self.spawned, self._alive = list(scripts), 0, False

    def _next(self) -> None:
        self.connection, self._alive = _ScriptedConnection(self.scripts.pop(0)), True
        self.spawned += 1

    def alive(self) -> bool:
        return self._alive

    def kill(self) -> None:
        self._alive = False

    def _answers_within(self, budget: float) -> bool:
        return True


def _scripted_task(count: int) -> decode_pool._Task:
    future = type("Future", (), {"cancelled": lambda _: False})()
    return decode_pool._Task([b""] * count, [f"images[{i}].encoded" for i in range(count)], future, None)


def test_an_image_a_worker_dies_on_once_is_tried_again_on_its_replacement():
    """A kill from outside (the OOM killer, the fork server's death) is not the image's doing."""
    pixels = np.zeros((28, 28), np.uint8)
    worker = _ScriptedWorker([[(pixels, 784), "dies"], [(pixels, 784), (pixels, 784)]])
    task = _scripted_task(3)
    worker._run(task)
    assert [isinstance(value, np.ndarray) for value, _ in task.results] == [True, True, True]
    assert worker.spawned == 2


def test_an_image_two_workers_die_on_is_blamed_and_the_rest_are_decoded():
    pixels = np.zeros((28, 28), np.uint8)
    worker = _ScriptedWorker([["dies"], ["dies"], [(pixels, 784)]])
    task = _scripted_task(2)
    worker._run(task)
    first, second = (value for value, _ in task.results)
    assert isinstance(first, InvalidInput)
    assert str(first) == "images[0].encoded: the decoder stopped on this image"
    assert isinstance(second, np.ndarray) and worker.spawned == 3


def test_a_worker_killed_while_it_decodes_loses_no_image():
    """kill -9 of the worker in the middle of a half-second decode: its replacement decodes
    the same image, and the call gets every answer."""
    import os
    import signal
    import threading

    pool = DecodePool(1, pixel_budget=10**9, decode_ms=20_000)
    pool.start()
    try:
        asyncio.run(pool.decode(BLOBS[:1], FIELDS[:1]))  # the worker has warmed up and taken work
        victim = pool.pids()[0]
        started = decode_pool._cpu_seconds(pool._workers[0].process)
        found: list = []
        big = _big_png()  # encoded before the call: the wait below is for the decode alone
        call = threading.Thread(target=lambda: found.extend(asyncio.run(pool.decode([big], FIELDS[:1]))))
        call.start()
        deadline = time.monotonic() + 60
        while decode_pool._cpu_seconds(pool._workers[0].process) < started + 0.1:  # it is on the image
            assert time.monotonic() < deadline and call.is_alive(), "the worker never started decoding"
            time.sleep(0.005)  # polling another process's CPU time
        os.kill(victim, signal.SIGKILL)
        call.join(120)
        after = pool.pids()
    finally:
        pool.close()
    assert len(found) == 1 and isinstance(found[0], np.ndarray), found
    assert after and victim not in after
