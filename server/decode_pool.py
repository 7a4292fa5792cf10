"""Encoded images decoded off the event loop, in a bounded pool that uses every core.

Decoding a 400×400 JPEG and preprocessing it takes about a millisecond of CPU, much of it
holding the GIL (numpy, Pillow's Python parts), so threads would leave the event loop —
health checks, small calls — waiting behind a big batch. A pool of processes (started by a
fork server, never forked from a process running gRPC) does the work; the event loop only
hands out chunks, checks the caller's deadline and the request's pixel budget between them,
and stops handing out when the caller goes away. ``bench/decode_pool.py`` measures threads
against processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Sequence

import numpy as np

from mnist_serving.common import processes
from mnist_serving.server import preprocess
from mnist_serving.server.errors import DeadlineExpired, InvalidInput

CHUNK = 16  # images per task: amortises the hand-over without making tasks coarse


def decode_chunk(
    blobs: Sequence[bytes], fields: Sequence[str]
) -> list[tuple[np.ndarray | InvalidInput, int]]:
    """Runs in a pool worker: each image decoded on its own (a bad one is its own error)."""
    out: list[tuple[np.ndarray | InvalidInput, int]] = []
    for blob, field in zip(blobs, fields, strict=True):
        try:
            out.append(preprocess.decode_sized(blob, field))
        except InvalidInput as exc:
            out.append((exc, 0))
    return out


def _ready() -> int:
    return os.getpid()


DECODE_NICENESS = 10


def _worker_init() -> None:
    """Pool workers die with the server, leave its signals to it, and run at a lower CPU
    priority: busy with a big batch they still use every idle core, but the server's event
    loop (health checks, small calls) runs first."""
    processes.worker_init()
    try:
        os.nice(DECODE_NICENESS)
    except OSError:  # not permitted here: decoding still works, at the same priority
        pass


class DecodePool:
    """``workers`` processes (or threads, ``kind="thread"``); 0 workers decodes inline."""

    def __init__(self, workers: int, pixel_budget: int, kind: str = "process") -> None:
        self.workers = workers
        self.pixel_budget = pixel_budget
        self.kind = kind
        self._executor: concurrent.futures.Executor | None = None

    def start(self) -> None:
        """Create the workers and have each import the decoder now, not on the first request."""
        if self.workers <= 0:
            return
        if self.kind == "thread":
            self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
            return
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(
            ["mnist_serving.common.forkserver_preload", "mnist_serving.server.decode_pool"]
        )
        self._executor = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_worker_init
        )
        for future in [self._executor.submit(_ready) for _ in range(self.workers * 2)]:
            future.result(timeout=120)

    async def decode(
        self, blobs: Sequence[bytes], fields: Sequence[str], deadline: float | None = None
    ) -> list[np.ndarray | InvalidInput]:
        """Each blob → uint8 [28,28] or its InvalidInput, in order. The whole request fails
        (InvalidInput) once its images add up to more than the pixel budget."""
        if self._executor is None:
            return self._inline(blobs, fields)
        loop = asyncio.get_running_loop()
        results: list[np.ndarray | InvalidInput | None] = [None] * len(blobs)
        starts = list(range(0, len(blobs), CHUNK))
        window = max(1, self.workers * 2)
        pending: dict[asyncio.Future, int] = {}
        pixels = 0
        try:
            while starts or pending:
                while starts and len(pending) < window:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise DeadlineExpired("deadline expired while decoding images")
                    start = starts.pop(0)
                    part = slice(start, start + CHUNK)
                    future = loop.run_in_executor(self._executor, decode_chunk, blobs[part], fields[part])
                    pending[future] = start
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    start = pending.pop(future)
                    for offset, (value, count) in enumerate(future.result()):
                        results[start + offset] = value
                        pixels += count
                self._check_budget(pixels)
        finally:
            for future in pending:  # the caller left, or the request failed: stop handing out
                future.cancel()
        return results  # type: ignore[return-value]

    def _inline(self, blobs: Sequence[bytes], fields: Sequence[str]) -> list[np.ndarray | InvalidInput]:
        results: list[np.ndarray | InvalidInput] = []
        pixels = 0
        for value, count in decode_chunk(blobs, fields):
            pixels += count
            self._check_budget(pixels)
            results.append(value)
        return results

    def _check_budget(self, pixels: int) -> None:
        if pixels > self.pixel_budget:
            raise InvalidInput(
                f"images: more than {self.pixel_budget:,} pixels to decode in one request; "
                "send fewer or smaller images per request"
            )

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
