"""The batcher's queue: requests cut into chunks of at most one run, in the order runs take
them. A request's first chunk goes ahead of other requests' later chunks, so a single image
waits behind one run of a big batch, not behind all of them."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

import numpy as np

from mnist_serving.server import tracing
from mnist_serving.server.batch_stats import BatchStats, RequestTimes
from mnist_serving.server.errors import DeadlineExpired


class Pending:
    """One accepted request: its future, deadline, and the rows of the chunks answered so far."""

    __slots__ = ("future", "deadline", "results", "remaining", "enqueued", "trace", "times")

    def __init__(self, chunks: int, deadline: float | None, times: RequestTimes | None = None) -> None:
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.deadline = deadline
        self.results: list = [None] * chunks
        self.remaining = chunks
        self.enqueued = time.monotonic()
        self.trace = tracing.run_trace()  # None unless this call is traced
        self.times = times  # where its queue wait and run time are added up, if anywhere

    def dead(self, now: float) -> bool:
        return self.future.done() or (self.deadline is not None and now >= self.deadline)

    def answer(self, index: int, probabilities: np.ndarray, labels: np.ndarray) -> None:
        self.results[index], self.remaining = (probabilities, labels), self.remaining - 1
        if self.remaining == 0 and not self.future.done():
            parts = self.results  # one chunk's rows as they are; a split request's joined in order
            joined = (
                parts[0] if len(parts) == 1 else tuple(np.concatenate(r) for r in zip(*parts, strict=True))
            )
            self.future.set_result(joined)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(slots=True)
class Chunk:
    request: Pending
    index: int
    images: np.ndarray


class ChunkQueue:
    def __init__(self, max_batch_size: int, stats: BatchStats) -> None:
        self.max_batch_size, self.stats = max_batch_size, stats
        self._chunks: collections.deque[Chunk] = collections.deque()
        self.images = 0  # queued; changed only by add and _pop
        self._later = 0  # queued chunks after a request's first; changed only by add and _pop

    def __len__(self) -> int:
        return len(self._chunks)

    def oldest(self) -> Pending:
        return self._chunks[0].request

    def add(self, images: np.ndarray, deadline: float | None, times: RequestTimes | None = None) -> Pending:
        step = self.max_batch_size
        if len(images) <= step:  # the common case: one chunk
            request = Pending(1, deadline, times)
            first, later = Chunk(request, 0, images), []
        else:
            parts = [images[i : i + step] for i in range(0, len(images), step)]
            request = Pending(len(parts), deadline, times)
            first = Chunk(request, 0, parts[0])
            later = [Chunk(request, i, part) for i, part in enumerate(parts[1:], 1)]
        if self._later:  # ahead of the first chunk that is some request's later one
            self._chunks.insert(next(i for i, c in enumerate(self._chunks) if c.index > 0), first)
        else:
            self._chunks.append(first)
        self._chunks.extend(later)
        self.images += len(images)
        self._later += len(later)
        return request

    def _pop(self) -> Chunk:
        chunk = self._chunks.popleft()
        self.images -= len(chunk.images)
        self._later -= chunk.index > 0
        return chunk

    def take(self, most_chunks: int) -> list[Chunk]:
        """A batch: chunks until the next would overflow it; dead requests' chunks are dropped."""
        batch, size, now = [], 0, time.monotonic()
        while self._chunks:
            chunk = self._chunks[0]
            if chunk.request.dead(now):
                self._drop(self._pop().request)
                continue
            if batch and (size + len(chunk.images) > self.max_batch_size or len(batch) >= most_chunks):
                break
            batch.append(self._pop())
            size += len(chunk.images)
        return batch

    def take_all(self) -> list[Chunk]:
        return [self._pop() for _ in range(len(self._chunks))]

    def _drop(self, request: Pending) -> None:
        if request.future.cancelled():
            self.stats.dropped_cancelled += 1
        elif not request.future.done():
            self.stats.dropped_expired += 1
            request.future.set_exception(DeadlineExpired("deadline expired while queued; not run"))
