"""Encoded images decoded off the event loop, in a pool of processes that heals itself.

Decoding a 400×400 JPEG and preprocessing it takes about a millisecond of CPU, much of it
holding the GIL (numpy, Pillow's Python parts), so threads would leave the event loop —
health checks, small calls — waiting behind a big batch. Worker processes (started by a
fork server, never forked from a process running gRPC) do the work; the event loop only
hands out chunks, checks the caller's deadline and the request's pixel budget between them,
and stops handing out when the caller goes away.

The pool manages its own workers (Python's ProcessPoolExecutor breaks as a whole when one
worker dies): each worker has a feeder thread here that sends it a chunk and reads its
answers one image at a time. A worker that dies (the OOM killer, kill -9) is replaced and the
image it was on is tried once more on its replacement: a kill from outside is not the image's
doing, and only an image that a second worker dies on too gets its own INVALID_ARGUMENT. One
that spends more than ``--max-decode-ms`` of CPU on an image (a decoder bomb) is killed and
replaced, and that image gets its own INVALID_ARGUMENT at once.
A worker that only waits for a core on a busy machine is given up to ten budgets of time.
``bench/decode_pool.py`` measures threads against processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnist_serving.common import processes
from mnist_serving.server.errors import DeadlineExpired, InvalidInput

log = logging.getLogger(__name__)

CHUNK = 16  # images per task: amortises the hand-over without making tasks coarse
WALL_BUDGETS = 10  # an image waiting for a core is given at most this many decode budgets
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
DECODE_NICENESS = 10
Decoded = tuple[np.ndarray | InvalidInput, int]  # pixels or the image's error; its pixel count


def decode_chunk(blobs: Sequence[bytes], fields: Sequence[str]) -> list[Decoded]:
    """Each image decoded on its own (a bad one is its own error)."""
    return [_decode_one(blob, field) for blob, field in zip(blobs, fields, strict=True)]


def _decode_one(blob: bytes, field: str) -> Decoded:
    # Imported where images are decoded (the workers; the fork server preloads it): the
    # server's own process never needs OpenCV and Pillow unless it decodes inline.
    from mnist_serving.server import preprocess

    try:
        return preprocess.decode_sized(blob, field)
    except InvalidInput as exc:
        return exc, 0


def _worker_main(connection: multiprocessing.connection.Connection) -> None:
    """A worker process: dies with the server, leaves its signals to it (the pool stops it
    with SIGKILL), runs at a lower CPU priority (the event loop runs first), and answers each
    image as soon as it is decoded."""
    processes.worker_init()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a signal to the process group is the server's
    try:
        os.nice(DECODE_NICENESS)
    except OSError:  # not permitted here: decoding still works, at the same priority
        pass
    from mnist_serving.common import preprocess

    preprocess.warm_up()  # before the first hand-over, so no image's budget pays for it
    while (task := connection.recv()) is not None:
        blobs, fields = task
        connection.send(None)  # received: the first image's budget starts now
        for blob, field_name in zip(blobs, fields, strict=True):
            connection.send(_decode_one(blob, field_name))


@dataclass
class _Task:
    blobs: Sequence[bytes]
    fields: Sequence[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    results: list[Decoded] = field(default_factory=list)


class _Worker:
    """One worker process and the feeder thread that sends it chunks and reads its answers."""

    def __init__(self, pool: DecodePool, number: int) -> None:
        self.pool, self.number = pool, number
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: multiprocessing.connection.Connection | None = None
        self.thread = threading.Thread(target=self._feed, name=f"decode-feeder-{number}", daemon=True)

    def spawn(self) -> None:
        parent, child = self.pool.context.Pipe()
        process = self.pool.context.Process(target=_worker_main, args=(child,), daemon=True)
        process.start()
        child.close()
        self.process, self.connection = process, parent

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
        if self.connection is not None:
            self.connection.close()
        self.process = self.connection = None

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def _feed(self) -> None:
        while (task := self.pool.tasks.get()) is not None:
            if task.future.cancelled():
                continue
            outcome: list[Decoded] | Exception = task.results
            try:
                self._run(task)
            except Exception as exc:  # never leave a caller waiting on a feeder that broke
                log.exception("decode worker %d: feeding failed", self.number)
                outcome = exc
            try:
                task.loop.call_soon_threadsafe(_settle, task.future, outcome)
            except RuntimeError:  # the caller's event loop has closed: nobody waits
                pass
        self.kill()

    def _run(self, task: _Task) -> None:
        """Decode every image of the task, replacing the worker as often as it dies or overruns.
        An image is blamed only for what happens while the worker is on it: a worker found dead
        before it took the chunk is replaced and the chunk handed over again, and an image is
        blamed for a worker's death only when a second worker dies on it too (a worker killed
        from outside, as the OOM killer or the fork server's death does, takes an image down
        once; a decoder that crashes on it does so again)."""
        budget = self.pool.decode_seconds
        handovers = 0
        died_on: set[int] = set()  # images of this task a worker has died on once
        while len(task.results) < len(task.blobs) and not task.future.cancelled():
            if not self.alive():
                self.kill()
                self.pool.spawn(self)
            done, taken = len(task.results), False
            try:
                self.connection.send((task.blobs[done:], task.fields[done:]))
                if not self.connection.poll(max(budget, 5.0)):  # the chunk's hand-over
                    raise TimeoutError
                self.connection.recv()
                taken = True
                while len(task.results) < len(task.blobs):
                    if not self._answers_within(budget):
                        raise TimeoutError
                    task.results.append(self.connection.recv())
            except TimeoutError:
                self._blame(task, f"took longer than {budget * 1e3:g} ms to decode")
            except (EOFError, OSError):  # the worker died (killed, or the decoder crashed it)
                handovers += not taken
                current = len(task.results)
                if (taken and current in died_on) or handovers > 3:
                    self._blame(task, "the decoder stopped on this image")
                elif taken:
                    died_on.add(current)
                    name = task.fields[current]
                    log.warning("decode worker %d died on %s; replaced, trying it again", self.number, name)
                    self.kill()
                else:
                    log.warning("decode worker %d was found dead; replaced", self.number)
                    self.kill()

    def _answers_within(self, budget: float) -> bool:
        """The worker answers before it has spent ``budget`` of CPU on the image. A worker that
        waits for a core (the machine is busy; decoding runs niced) is not decoding: past the
        first budget it is blamed only for a window it spent mostly computing, or once it has
        taken ``WALL_BUDGETS`` budgets in all."""
        if self.connection.poll(budget):
            return True
        for _ in range(WALL_BUDGETS - 1):
            before = _cpu_seconds(self.process)
            if self.connection.poll(budget):
                return True
            after = _cpu_seconds(self.process)
            if before is None or after is None or after - before >= budget / 2:
                return False
        return False

    def _blame(self, task: _Task, why: str) -> None:
        """The image the worker is on fails on its own; the worker is stopped and replaced."""
        field_name = task.fields[len(task.results)]
        log.warning("decode worker %d: %s: %s; replaced", self.number, field_name, why)
        task.results.append((InvalidInput(why, field_name), 0))
        self.kill()


def _cpu_seconds(process: multiprocessing.process.BaseProcess | None) -> float | None:
    """CPU time a worker has used (Linux /proc; None where it cannot be read)."""
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (AttributeError, OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _settle(future: asyncio.Future, value: object) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class DecodePool:
    """``workers`` processes that heal themselves; 0 workers decodes inline (tests, tools)."""

    def __init__(
        self, workers: int, pixel_budget: int, decode_ms: float = 500.0, kind: str = "process"
    ) -> None:
        """``kind="thread"``: threads instead of processes (what ``bench/decode_pool.py`` compares)."""
        self.workers, self.kind = workers, kind
        self.pixel_budget = pixel_budget
        self.decode_seconds = decode_ms / 1e3
        self.tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self.context = multiprocessing.get_context("forkserver")
        self.on_health_change: Callable[[], None] | None = None
        self._workers: list[_Worker] = []
        self._spawn_failing = False

    def start(self) -> None:
        """Start the fork server and the workers now, not on the first request."""
        if self.workers <= 0:
            return
        if self.kind == "thread":
            self._threads = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
            return
        self.context.set_forkserver_preload(
            [
                "mnist_serving.common.forkserver_preload",
                "mnist_serving.server.decode_forkserver",
                "mnist_serving.server.decode_pool",
                "mnist_serving.server.preprocess",
            ]
        )
        for number in range(self.workers):
            worker = _Worker(self, number)
            worker.spawn()
            worker.thread.start()
            self._workers.append(worker)

    def spawn(self, worker: _Worker) -> None:
        """Replace a worker; while none can be started, the pool is not healthy."""
        while True:
            try:
                worker.spawn()
            except Exception:
                log.exception("decode worker %d cannot be started; retrying", worker.number)
                self._set_failing(True)
                time.sleep(1.0)
                continue
            self._set_failing(False)
            return

    def _set_failing(self, failing: bool) -> None:
        if failing != self._spawn_failing:
            self._spawn_failing = failing
            if self.on_health_change is not None:
                self.on_health_change()

    def healthy(self) -> bool:
        """Encoded images can be decoded: no worker is failing to start."""
        return not self._spawn_failing

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None and w.process.pid]

    async def decode(
        self, blobs: Sequence[bytes], fields: Sequence[str], deadline: float | None = None
    ) -> list[np.ndarray | InvalidInput]:
        """Each blob → uint8 [28,28] or its InvalidInput, in order. The whole request fails
        (InvalidInput) once its images add up to more than the pixel budget."""
        if self.workers <= 0:
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
                    part, names = blobs[start : start + CHUNK], fields[start : start + CHUNK]
                    if self.kind == "thread":
                        future = loop.run_in_executor(self._threads, decode_chunk, part, names)
                    else:
                        future = loop.create_future()
                        self.tasks.put(_Task(part, names, future, loop))
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
        """Stop every worker once the chunks already handed out are done."""
        if self.kind == "thread" and self.workers > 0:
            self._threads.shutdown(wait=True, cancel_futures=True)
        for _ in self._workers:
            self.tasks.put(None)
        for worker in self._workers:
            worker.thread.join()
        self._workers = []
