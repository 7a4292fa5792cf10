"""Dynamic batching: concurrent requests are coalesced into one onnxruntime run.

Each request's images are cut into chunks of at most ``max_batch_size``; a single worker
task gathers chunks until the batch is full or ``max_delay`` has passed since the first,
runs the model in a one-thread executor (so the event loop keeps accepting work while it
runs), then slices results back to each request's future. Cancelled or expired requests
are dropped before inference; a full queue refuses new requests at once.

While one batch runs, a second is handed to the model thread when it is already full, so
the thread goes from run to run without waiting for the event loop (which cost it a third
of its time with batches of 256). A partial batch waits for the running one instead: what
arrives meanwhile joins it (handing partial batches over early made single-image batches
a third smaller and the server slower).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mnist_serving.server import tracing
from mnist_serving.server.config import BatchingSettings
from mnist_serving.server.errors import DeadlineExpired, NotReady, Overloaded

log = logging.getLogger(__name__)

PIPELINE_DEPTH = 2
"""Batches handed to the model thread at once: the one running and a full one to run next."""

RunFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
BatchObserver = Callable[[int, float, list[float]], None]
"""Called after each run: (images in the batch, seconds in onnxruntime, each request's queue wait)."""


@dataclass
class BatchStats:
    """Counters the metrics module and tests read."""

    batches: int = 0
    images: int = 0
    dropped_expired: int = 0
    dropped_cancelled: int = 0
    refused_overload: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)


class _Request:
    __slots__ = ("images", "future", "deadline", "results", "remaining", "enqueued", "trace", "ran")

    def __init__(
        self, images: np.ndarray, future: asyncio.Future, deadline: float | None, chunks: int
    ) -> None:
        self.images = images
        self.future = future
        self.deadline = deadline
        self.results: list = [None] * chunks
        self.remaining = chunks
        self.enqueued = time.monotonic()
        # With tracing on: the caller's span context, then (enqueued, started, ended ns,
        # images in the run, the batch span's context) for its queue and inference spans.
        self.trace = tracing.current_context()
        self.ran: list | None = [time.time_ns(), 0, 0, 0, None] if self.trace is not None else None

    def dead(self, now: float) -> bool:
        return self.future.done() or (self.deadline is not None and now >= self.deadline)


class _Chunk:
    __slots__ = ("request", "index", "images")

    def __init__(self, request: _Request, index: int, images: np.ndarray) -> None:
        self.request, self.index, self.images = request, index, images


class DynamicBatcher:
    """Coalesces requests up to ``max_batch_size`` images, waiting at most ``max_delay_s``."""

    def __init__(
        self,
        run: RunFn,
        settings: BatchingSettings = BatchingSettings(),
        observer: BatchObserver | None = None,
        inline_max_images: int = 0,
    ) -> None:
        """``inline_max_images``: runs this small execute on the event loop itself, where the
        model is fast enough (tens of microseconds) that a thread hand-off costs more."""
        self._run = run
        self._inline_max_images = inline_max_images
        self.max_batch_size = settings.max_batch_size
        self.max_delay_s = settings.max_delay_s
        self.max_queue = settings.max_queue
        self.max_queue_images = settings.max_queue_images
        self._pending_images = 0
        self.enabled = settings.enabled
        self._observer = observer
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._pending_requests = 0
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
        self._task: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._queued = 0  # images in self._chunks
        self._closed = False
        self.stats = BatchStats()

    @property
    def queue_depth(self) -> int:
        """Requests accepted and not yet answered."""
        return self._pending_requests

    def start(self) -> None:
        """Start the worker, or start a new one if the last one ended: it is never lost silently."""
        if self._task is None or self._task.done():
            if self._task is not None and not self._closed:
                log.error("batcher worker had stopped; starting a new one")
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def infer(self, images: np.ndarray, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Classify uint8 [N,28,28]; ``deadline`` is a time.monotonic() instant or None."""
        if self._closed:
            raise NotReady("server is shutting down; not accepting new requests")
        if deadline is not None and time.monotonic() >= deadline:
            self.stats.dropped_expired += 1
            raise DeadlineExpired("deadline expired before the request was queued")
        if self._pending_requests >= self.max_queue:
            self.stats.refused_overload += 1
            raise Overloaded(f"queue full ({self.max_queue} requests waiting); retry later")
        if self._pending_images and self._pending_images + len(images) > self.max_queue_images:
            self.stats.refused_overload += 1
            raise Overloaded(
                f"queue full ({self._pending_images} images waiting, at most {self.max_queue_images}); "
                "retry later"
            )
        self.start()  # a no-op while the worker lives
        step = self.max_batch_size
        chunks = max(1, -(-len(images) // step))
        future = asyncio.get_running_loop().create_future()
        request = _Request(images, future, deadline, chunks)
        # A request's first chunk goes ahead of the later chunks of requests already queued: a
        # single image never waits behind every run of a 2,000-image batch, only behind one.
        position = next((i for i, c in enumerate(self._chunks) if c.index > 0), len(self._chunks))
        self._chunks.insert(position, _Chunk(request, 0, images[:step]))
        for index in range(1, chunks):
            self._chunks.append(_Chunk(request, index, images[index * step : (index + 1) * step]))
        self._queued += len(images)
        self._pending_requests += 1
        self._pending_images += len(images)
        if self._may_hand_over():
            self._wakeup.set()
        try:
            result = await future
        finally:
            self._pending_requests -= 1
            self._pending_images -= len(images)
        if request.ran is not None:
            tracing.run_spans(*request.ran)
        return result

    def _take_batch(self) -> list[_Chunk]:
        """Pop chunks (skipping dead requests) until the batch would overflow."""
        batch: list[_Chunk] = []
        size = 0
        now = time.monotonic()
        limit = self.max_batch_size if self.enabled else 1
        while self._chunks:
            chunk = self._chunks[0]
            request = chunk.request
            if request.dead(now):
                self._chunks.popleft()
                self._queued -= len(chunk.images)
                self._drop(request, now)
                continue
            if batch and (size + len(chunk.images) > self.max_batch_size or len(batch) >= limit):
                break
            self._chunks.popleft()
            self._queued -= len(chunk.images)
            batch.append(chunk)
            size += len(chunk.images)
        return batch

    def _drop(self, request: _Request, now: float) -> None:
        if request.future.done():
            if request.future.cancelled():
                self.stats.dropped_cancelled += 1
            return
        self.stats.dropped_expired += 1
        request.future.set_exception(DeadlineExpired("deadline expired while queued; not run"))

    def _may_hand_over(self) -> bool:
        """Whether a batch may go to the model thread now: nothing runs, or it would be full."""
        running = len(self._in_flight)
        if running == 0:
            return True
        full = not self.enabled or self._queued >= self.max_batch_size
        return running < PIPELINE_DEPTH and full

    async def _worker(self) -> None:
        while not (self._closed and not self._chunks):
            try:
                await self._step()
            except Exception as exc:  # never leave a caller waiting on a worker that broke
                log.exception("batcher step failed; failing the requests it held")
                self._fail_queued(exc)

    def _fail_queued(self, exc: BaseException) -> None:
        self._queued = 0
        while self._chunks:
            future = self._chunks.popleft().request.future
            if not future.done():
                future.set_exception(exc)

    async def _step(self) -> None:
        """One round: wait for work (and the batching delay), then run one batch."""
        if not self._chunks or not self._may_hand_over():
            self._wakeup.clear()
            await self._wakeup.wait()  # set by new work, and by each run's end
            return
        if self.enabled and self.max_delay_s > 0 and self._queued < self.max_batch_size:
            first = self._chunks[0].request.enqueued
            wait = first + self.max_delay_s - time.monotonic()
            if wait > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    pass
                if self._queued < self.max_batch_size and time.monotonic() < first + self.max_delay_s:
                    return
                if not self._may_hand_over():
                    return
        batch = self._take_batch()
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._run_and_wake(batch))
        self._in_flight.add(task)

    async def _run_and_wake(self, batch: list[_Chunk]) -> None:
        try:
            await self._run_batch(batch)
        except Exception as exc:  # a model failure (or any other) fails every request in the batch
            log.exception("inference failed for a batch of %d chunks", len(batch))
            for chunk in batch:
                if not chunk.request.future.done():
                    chunk.request.future.set_exception(exc)
        finally:
            self._in_flight.discard(asyncio.current_task())
            self._wakeup.set()  # the worker may hand over the next batch

    def _timed_run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, int, int]:
        """The run with its own clock: a batch may wait in the thread's queue before it starts."""
        started, started_ns = time.monotonic(), time.time_ns()
        probabilities, labels = self._run(images)
        return probabilities, labels, started, time.monotonic() - started, started_ns, time.time_ns()

    async def _run_batch(self, batch: list[_Chunk]) -> None:
        images = batch[0].images if len(batch) == 1 else np.concatenate([c.images for c in batch])
        if len(images) <= self._inline_max_images:
            # Tens of microseconds of onnxruntime: cheaper than the hand-off to a thread and
            # back (two wake-ups), which would double a single call's CPU cost.
            probabilities, labels, started, elapsed, started_ns, ended_ns = self._timed_run(images)
        else:
            loop = asyncio.get_running_loop()
            probabilities, labels, started, elapsed, started_ns, ended_ns = await loop.run_in_executor(
                self._executor, self._timed_run, images
            )
        waits = [started - c.request.enqueued for c in batch if c.index == 0]
        traced = [c.request for c in batch if c.request.ran is not None]
        if traced:
            context = tracing.batch_span(len(images), started_ns, ended_ns, [r.trace for r in traced])
            for request in traced:
                ran = request.ran
                ran[1] = ran[1] or started_ns  # a request cut into chunks: first run to last
                ran[2], ran[3], ran[4] = ended_ns, max(ran[3], len(images)), context
        self.stats.batches += 1
        self.stats.images += len(images)
        self.stats.batch_sizes[len(images)] += 1
        offset = 0
        for chunk in batch:
            n = len(chunk.images)
            request = chunk.request
            if not request.future.done():
                request.results[chunk.index] = (
                    probabilities[offset : offset + n],
                    labels[offset : offset + n],
                )
                request.remaining -= 1
                if request.remaining == 0:
                    results = request.results
                    if len(results) == 1:
                        request.future.set_result(results[0])
                    else:
                        request.future.set_result(
                            (np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]))
                        )
            offset += n
        if self._observer is not None:
            try:
                self._observer(len(images), elapsed, waits)
            except Exception:  # metrics must never cost a caller its answer
                log.exception("batch observer failed")

    async def close(self) -> None:
        """Stop accepting work, finish everything already accepted, then stop the worker."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))
        self._executor.shutdown(wait=True)
