"""One batch job: chunks in, rows out, in input order, with bounded memory.

Image files are decoded and preprocessed where the data is, in a pool of processes (the
same pipeline as the server's, ``mnist_serving.common.preprocess``), and sent as raw
28×28 pixels; ``server_decode`` sends the encoded bytes instead. Up to ``concurrency``
chunks are in flight; results are written in input order as they complete, so memory holds
about ``2 × concurrency`` chunks whatever the input size. A file that cannot be read or
decoded, or an image the server rejects, becomes a row with an error: the job goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import multiprocessing
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mnist_serving.client.batch.sources import STDIN, Chunk
from mnist_serving.client.results import BatchResult
from mnist_serving.common import processes
from mnist_serving.common.contract import IMAGE_SHAPE
from mnist_serving.common.cpus import available_cpus

DECODE_ATTEMPTS = 3  # a chunk whose decode worker died is retried in a new pool this many times in all

# What the fork server imports once, so each decode worker starts with it loaded (the
# decoding stack costs more to import than most jobs spend decoding a chunk). The job's own
# process never decodes, and does not import OpenCV and Pillow: the fork server does, while
# the job connects and lists its inputs.
PRELOAD = [
    "mnist_serving.common.forkserver_preload",
    "mnist_serving.client.batch.job",
    "mnist_serving.common.preprocess",
]


@dataclass
class Row:
    """One output row: an image's name and its answer, or why there is none."""

    source: str
    index: int
    label: int | None = None
    confidence: float | None = None
    probabilities: np.ndarray | None = None
    error: str | None = None
    truth: int | None = None  # the label given with the input, if any


class Backend(Protocol):
    """Where images are classified: the server (``ServerBackend``) or in process (``local``)."""

    def classify_raw(self, images: np.ndarray) -> BatchResult: ...

    def classify_encoded(self, blobs: list[bytes]) -> BatchResult: ...


@dataclass
class Decoded:
    """A chunk of files after reading and preprocessing: pixels for those that worked."""

    images: np.ndarray  # uint8 [k,28,28]
    rows: list[int]  # which files (positions in the chunk) the k images are
    errors: dict[int, str] = field(default_factory=dict)  # position → "file: reason"


def read_and_decode(
    paths: list[str],
    stdin: bytes | None,
    decode: bool,
    held: list[bytes] | None = None,
    base: str | None = None,
) -> Decoded | list[bytes | str]:
    """In a decode worker: each file (or each ``held`` encoded image, named by ``paths``) →
    28×28 pixels (``decode``) or its bytes; errors named. Relative paths are read from
    ``base`` (the caller's directory, for workers that run elsewhere) and named as given."""
    from mnist_serving.common import preprocess  # preloaded by the fork server (PRELOAD)

    images, rows, errors, blobs = [], [], {}, []
    for position, name in enumerate(paths):
        try:
            if held is not None:
                data = held[position]
            elif name == STDIN and stdin is not None:
                data = stdin
            else:
                data = _read(os.path.join(base, name) if base else name)
        except OSError as exc:
            errors[position] = f"{name}: cannot read ({exc.strerror or exc})"
            blobs.append(errors[position])
            continue
        if not decode:
            blobs.append(data)
            continue
        try:
            images.append(preprocess.decode(data)[0])
            rows.append(position)
        except preprocess.ImageError as exc:
            errors[position] = exc.item_message(name)
    if not decode:
        return blobs
    pixels = np.stack(images) if images else np.zeros((0, *IMAGE_SHAPE), np.uint8)
    return Decoded(pixels, rows, errors)


def _read(path: str) -> bytes:
    """A whole regular file, unbuffered: about half what ``Path.read_bytes`` costs on a small
    image (4.8 against 8.7 µs), where decoding one costs about 55. Opened without
    blocking, so a named pipe with an image's name is refused instead of holding the worker
    (and the job) until something writes to it."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(descriptor, "rb", buffering=0) as file:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device)")
        return file.read()


@dataclass
class Summary:
    written: int = 0
    failed: int = 0
    skipped: int = 0  # rows already in the output (--resume)
    correct: int = 0
    known: int = 0


def _rows_from(names: list[tuple[str, int]], result: BatchResult, positions: list[int]) -> dict[int, Row]:
    out = {}
    for i, position in enumerate(positions):
        source, index = names[position]
        error = result.errors.get(i)
        if error is not None:
            out[position] = Row(source, index, error=error)
            continue
        probs = result.probabilities[i] if result.probabilities is not None else None
        out[position] = Row(source, index, int(result.labels[i]), float(result.confidences[i]), probs)
    return out


Prepared = Decoded | list[bytes | str] | None


def start_decode_server() -> None:
    """Start the decode pool's fork server now, before any gRPC channel is open: the only
    fork of this process then happens while gRPC has no calls in flight."""
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def prepare(chunk: Chunk, server_decode: bool, base: str | None = None) -> Prepared:
    """The half of a chunk's work done where the data is (a decode process, or a Ray task):
    read and preprocess its files, or only read them for the server to decode. Arrays need
    nothing (None). ``base``: the directory relative paths name (the driver's)."""
    if chunk.array is not None:
        return None
    names = chunk.names()
    paths = [f"{s}#{i}" for s, i in names] if chunk.blobs is not None else chunk.files
    return read_and_decode(paths, chunk.stdin, not server_decode, chunk.blobs, base)


def classify_chunk(backend: Backend, chunk: Chunk, prepared: Prepared) -> list[Row]:
    """The other half (a caller thread, or a Ray actor): the backend's answers as rows in
    the chunk's order, with the preparation's errors in their places."""
    names = chunk.names()
    rows: dict[int, Row] = {}
    if chunk.array is not None:
        rows = _rows_from(names, backend.classify_raw(chunk.array), list(range(len(chunk))))
    elif isinstance(prepared, Decoded):
        for position, message in prepared.errors.items():
            rows[position] = Row(*names[position], error=message)
        if prepared.rows:
            rows.update(_rows_from(names, backend.classify_raw(prepared.images), prepared.rows))
    elif prepared is not None:
        readable = [i for i, blob in enumerate(prepared) if isinstance(blob, bytes)]
        for i, blob in enumerate(prepared):
            if isinstance(blob, str):
                rows[i] = Row(*names[i], error=blob)
        if readable:
            result = backend.classify_encoded([prepared[i] for i in readable])
            # The server names items by their index in the request; name the file too.
            result.errors.update({k: f"{names[readable[k]][0]}: {v}" for k, v in result.errors.items()})
            rows.update(_rows_from(names, result, readable))
    ordered = [rows[i] for i in range(len(chunk))]
    if chunk.labels is not None:
        for row, truth in zip(ordered, chunk.labels, strict=True):
            row.truth = int(truth) if truth >= 0 else None  # -1: a null label, no label
    return ordered


class Job:
    """Runs chunks through a backend; ``write`` receives each chunk's rows, in input order."""

    def __init__(
        self,
        backend: Backend,
        concurrency: int = 4,
        decode_workers: int = 0,
        server_decode: bool = False,
    ) -> None:
        self.backend = backend
        self.concurrency = max(1, concurrency)
        self.server_decode = server_decode
        self.workers = decode_workers if decode_workers > 0 else available_cpus()
        self.decoders = self._new_pool()
        self._replacing = threading.Lock()
        self.callers = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="job")
        self.stopping = False

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        # Forkserver: workers never inherit the caller's gRPC channels or threads.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=processes.worker_init
        )

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        """A worker killed (OOM killer, ``kill -9``) breaks the whole pool and every chunk in
        it; the first caller to see it starts a new pool, the others use that one."""
        with self._replacing:
            if self.decoders is broken:
                broken.shutdown(wait=False)  # its chunks have all failed already
                self.decoders = self._new_pool()

    def _prepare(self, chunk: Chunk) -> Prepared:
        """The chunk's decoding, in a new pool if its worker died; after ``DECODE_ATTEMPTS``
        pools broke under it, its files are rows with an error (a file that kills any
        decoder that opens it must not stop the job)."""
        for _ in range(DECODE_ATTEMPTS):
            pool = self.decoders
            try:
                return pool.submit(prepare, chunk, self.server_decode).result()
            except (BrokenProcessPool, RuntimeError) as exc:
                # RuntimeError: submitted to a broken pool that another caller just shut down.
                broke = isinstance(exc, BrokenProcessPool) or pool is not self.decoders
                if self.stopping or not broke:
                    raise
                self._replace(pool)
        message = "decode worker died on this chunk (killed, or crashed decoding one of its files)"
        errors = {i: f"{name}: {message}" for i, (name, _) in enumerate(chunk.names())}
        if self.server_decode:
            return list(errors.values())
        return Decoded(np.zeros((0, *IMAGE_SHAPE), np.uint8), [], errors)

    def close(self) -> None:
        # Interrupted: calls in flight are not waited for (a held server would hold the exit);
        # closing the client's channel, which comes next, cancels them.
        self.callers.shutdown(wait=not self.stopping, cancel_futures=True)
        self.decoders.shutdown(wait=True, cancel_futures=True)

    def _run_chunk(self, chunk: Chunk) -> list[Row]:
        prepared = None
        if chunk.array is None:
            prepared = self._prepare(chunk)
        return classify_chunk(self.backend, chunk, prepared)

    def run(self, chunks: Iterable[Chunk], write: Callable[[list[Row]], None]) -> Iterator[int]:
        """Classify every chunk; yields the number of rows written after each chunk."""
        window: collections.deque[concurrent.futures.Future] = collections.deque()
        try:
            for chunk in chunks:
                if self.stopping:
                    break
                window.append(self.callers.submit(self._run_chunk, chunk))
                while len(window) > self.concurrency or (window and window[0].done()):
                    rows = _result(window.popleft())
                    write(rows)
                    yield len(rows)
            while window:
                rows = _result(window.popleft())
                write(rows)
                yield len(rows)
        finally:
            for future in window:
                future.cancel()


def _result(future: concurrent.futures.Future) -> list[Row]:
    """The future's rows, waited for in short steps: Ctrl-C may be delivered to a gRPC thread,
    and a main thread blocked in one long wait would never see it (the job would not stop)."""
    while True:
        try:
            return future.result(timeout=0.2)
        except concurrent.futures.TimeoutError:
            continue
