"""Dynamic batching: concurrent requests are coalesced into one onnxruntime run.

One worker takes chunks from the queue (``batch_queue.py``) until a batch is full or
``max_delay`` has passed, and runs it in a one-thread executor (tiny runs, and runs that take
every core, on the event loop). While a run executes on the thread, a next batch that is
already full is handed to the thread too, so it goes from run to run without waiting for the
event loop; a partial one waits and gathers what arrives. Cancelled or expired requests are
dropped before their run; a full queue refuses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable

import numpy as np

from mnist_serving.server import tracing
from mnist_serving.server.batch_queue import Chunk, ChunkQueue
from mnist_serving.server.batch_stats import BatchObserver, BatchStats, RequestTimes, RunTiming
from mnist_serving.server.config import BatchingSettings
from mnist_serving.server.errors import DeadlineExpired, NotReady, Overloaded

log = logging.getLogger(__name__)

PIPELINE_DEPTH = 2  # batches handed to the model thread at once: the running one and a full next
RunFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class DynamicBatcher:
    """Coalesces requests up to ``max_batch_size`` images, waiting at most ``max_delay_s``."""

    def __init__(
        self,
        run: RunFn,
        settings: BatchingSettings = BatchingSettings(),
        observer: BatchObserver | None = None,
        inline_max_images: int = 0,
        inline_min_images: int | None = None,
    ) -> None:
        """Runs of at most ``inline_max_images`` images, and of at least ``inline_min_images``
        (None: none), run on the event loop thread instead of the model thread."""
        self._run, self._observer, self._inline_max_images = run, observer, inline_max_images
        self._inline_min_images = inline_min_images
        self.settings = settings
        self.max_batch_size = settings.max_batch_size
        self.stats = BatchStats()
        self._queue = ChunkQueue(settings.max_batch_size, self.stats)
        self._pending: set = set()  # requests accepted and not yet answered
        self._pending_images = 0  # their images: changed only in infer
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._pending)

    def start(self) -> None:
        """Start the worker, or a new one if the last one ended: it is never lost silently."""
        if self._task is None or self._task.done():
            if self._task is not None and not self._closed:
                log.error("batcher worker had stopped; starting a new one")
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def infer(
        self, images: np.ndarray, deadline: float | None = None, times: RequestTimes | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Classify uint8 [N,28,28]; ``deadline`` is a time.monotonic() instant or None; the
        request's queue wait and run time are added to ``times``, if given."""
        settings = self.settings
        if self._closed:
            raise NotReady("server is shutting down; not accepting new requests")
        if deadline is not None and time.monotonic() >= deadline:
            self.stats.dropped_expired += 1
            raise DeadlineExpired("deadline expired before the request was queued")
        pending, waiting = len(self._pending), self._pending_images
        # A request bigger than the image limit is taken when nothing waits: it runs alone.
        if pending >= settings.max_queue or waiting and waiting + len(images) > settings.max_queue_images:
            self.stats.refused_overload += 1
            held = f"{pending} requests, {waiting} images waiting"
            raise Overloaded(f"queue full ({held}; at most {settings.max_queue_images} images); retry later")
        self.start()  # a no-op while the worker lives
        request = self._queue.add(images, deadline, times)
        self._pending.add(request)
        self._pending_images += len(images)
        if self._may_hand_over():
            self._wakeup.set()
        try:
            result = await request.future
            if times is not None:
                times.inferred_at = time.perf_counter()
            return result
        finally:
            self._pending.discard(request)
            self._pending_images -= len(images)
            if request.trace is not None:
                request.trace.emit()

    def _take_batch(self) -> list[Chunk]:
        return self._queue.take(self.max_batch_size if self.settings.enabled else 1)

    def _full(self) -> bool:
        return not self.settings.enabled or self._queue.images >= self.max_batch_size

    def _may_hand_over(self) -> bool:
        """Whether a batch may go to the model thread now: nothing runs, or it would be full."""
        return not self._running or (len(self._running) < PIPELINE_DEPTH and self._full())

    async def _worker(self) -> None:
        while not (self._closed and not self._queue):
            try:
                await self._step()
            except Exception as exc:  # never leave a caller waiting on a worker that broke
                log.exception("batcher step failed; failing the requests it held")
                for chunk in self._queue.take_all():
                    chunk.request.fail(exc)

    async def _step(self) -> None:
        """One round: wait for work (and the batching delay), then hand one batch over."""
        self._wakeup.clear()
        if not self._queue or not self._may_hand_over():
            await self._wakeup.wait()  # set by new work, and by each run's end
            return
        delay = self.settings.max_delay_s
        if delay > 0 and not self._full():
            wait = self._queue.oldest().enqueued + delay - time.monotonic()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    pass
                return  # look again: full now, or the delay is over
        batch = self._take_batch()
        if batch:
            self._running.add(asyncio.get_running_loop().create_task(self._run_batch(batch)))

    def _inline(self, images: int) -> bool:
        """A tiny run takes tens of µs: less than two thread wake-ups. A run on every core leaves
        the event loop no core to run on meanwhile, and the hand-off to the model thread and back
        would wait for a core twice (``docs/benchmarks.md``); the loop thread becomes one of
        onnxruntime's threads instead."""
        if images <= self._inline_max_images:
            return True
        return self._inline_min_images is not None and images >= self._inline_min_images

    def _timed_run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, RunTiming]:
        started, started_ns = time.monotonic(), time.time_ns()
        probabilities, labels = self._run(images)
        timing = RunTiming(len(images), started, time.monotonic() - started, started_ns, time.time_ns())
        return probabilities, labels, timing

    async def _run_batch(self, batch: list[Chunk]) -> None:
        try:
            begun = time.perf_counter()
            images = batch[0].images if len(batch) == 1 else np.concatenate([c.images for c in batch])
            input_s = time.perf_counter() - begun
            if self._inline(len(images)):
                probabilities, labels, timing = self._timed_run(images)
            else:
                loop = asyncio.get_running_loop()
                probabilities, labels, timing = await loop.run_in_executor(
                    self._executor, self._timed_run, images
                )
            begun = time.perf_counter()
            offset = 0
            for chunk in batch:
                end = offset + len(chunk.images)
                chunk.request.answer(chunk.index, probabilities[offset:end], labels[offset:end])
                offset = end
            self._ran(batch, timing, input_s, time.perf_counter() - begun)
        except Exception as exc:  # a model failure (or any other) fails every request in the batch
            log.exception("inference failed for a batch of %d chunks", len(batch))
            for chunk in batch:
                chunk.request.fail(exc)
        finally:
            self._running.discard(asyncio.current_task())
            self._wakeup.set()  # the worker may hand over the next batch

    def _ran(self, batch: list[Chunk], timing: RunTiming, input_s: float, output_s: float) -> None:
        """A run's statistics, metrics and trace times."""
        waits = [timing.started - c.request.enqueued for c in batch if c.index == 0]
        self.stats.record(timing, input_s, output_s)
        for chunk in batch:
            times = chunk.request.times
            if times is not None:
                times.infer += timing.seconds
                if chunk.index == 0:
                    times.queue += timing.started - chunk.request.enqueued
        traced = [c.request.trace for c in batch if c.request.trace is not None]
        if traced:
            tracing.batch_ran(traced, timing.images, timing.started_ns, timing.ended_ns)
        if self._observer is not None:
            try:
                self._observer(timing, waits)
            except Exception:  # metrics must never cost a caller its answer
                log.exception("batch observer failed")

    async def close(self) -> None:
        """Stop accepting work, finish everything already accepted, then stop the worker."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        while self._running:
            await asyncio.wait(list(self._running))
        self._executor.shutdown(wait=True)
