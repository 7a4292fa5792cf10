"""`mnist-classify --engine ray`: the same job on Ray Data, on one machine or a cluster.

The driver enumerates the inputs as the local engine does (``sources.chunks``, so globs,
directories, ``--files-from``, arrays and tables mean the same, and ``--resume`` skips the
same rows), hands them to Ray a window at a time, and writes the rows in input order with
the same writers. On the cluster:

- reading, decoding and preprocessing each chunk of files is a Ray task (``job.prepare``,
  the local engine's decode-worker function);
- classification runs in an actor pool (``job.classify_chunk``): each actor builds its
  backend once, the published ONNX model (``--model-repository``) or a client of the
  service (``--server``).

Paths and the model repository must be readable at the same place on every node (a shared
filesystem or a copy); the inputs' bytes then never pass through the driver.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_serving.client.batch.backends import LocalBackend, ServerBackend
from mnist_serving.client.batch.job import Backend, Row, classify_chunk, prepare
from mnist_serving.client.batch.sources import Chunk
from mnist_serving.client.client import Client

# Rows handed to Ray at once: bounds the driver's memory (file chunks are only paths;
# array chunks carry their pixels, 784 bytes a row).
WINDOW_ROWS = 1 << 20
WINDOW_ARRAY_BYTES = 256 << 20
ACTOR_CPUS = 0


@dataclass(frozen=True)
class BackendSpec:
    """What an actor needs to build its backend: settings that pickle, not a live channel."""

    repository: Path | None = None
    probabilities: bool = False
    model: str = ""
    version: str = ""
    client: dict[str, Any] = field(default_factory=dict)  # Client(**client) when no repository
    token_ref: Any = None  # the bearer token in Ray's object store: never an argument Ray shows

    def __post_init__(self) -> None:
        # Actors on other nodes run in other directories: files are named absolutely.
        if self.repository is not None:
            object.__setattr__(self, "repository", self.repository.absolute())
        absolute = {k: v.absolute() if isinstance(v, Path) else v for k, v in self.client.items()}
        object.__setattr__(self, "client", absolute)

    def build(self) -> Backend:
        if self.repository is not None:
            return LocalBackend(self.repository, self.probabilities, self.model, self.version)
        client = dict(self.client)
        if self.token_ref is not None:
            import ray

            client["token"] = ray.get(self.token_ref)
        return ServerBackend(Client(**client), self.probabilities, self.model, self.version)

    def without_secrets(self) -> BackendSpec:
        """The spec to hand to actors: the token goes by reference (Ray's dashboard lists actor
        arguments), fetched by each actor from the object store."""
        token = self.client.get("token")
        if token is None:
            return self
        import ray

        client = {k: v for k, v in self.client.items() if k != "token"}
        return dataclasses.replace(self, client=client, token_ref=ray.put(token))


class ChunkClassifier:
    """One actor of the pool: its backend is built once and reused for every chunk."""

    def __init__(self, spec: BackendSpec) -> None:
        self.backend = spec.build()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"seq": row["seq"], "rows": classify_chunk(self.backend, row["chunk"], row["prepared"])}


def prepare_row(row: dict[str, Any], server_decode: bool, base: str) -> dict[str, Any]:
    """A Ray task: one chunk read and preprocessed where it runs (``job.prepare``); relative
    paths are the driver's (``base``), whatever directory the node's workers run in."""
    prepared = prepare(row["chunk"], server_decode, base)
    return {"seq": row["seq"], "chunk": row["chunk"], "prepared": prepared}


def _windows(chunks: Iterable[Chunk]) -> Iterator[list[Chunk]]:
    window: list[Chunk] = []
    rows = array_bytes = 0
    for chunk in chunks:
        window.append(chunk)
        rows += len(chunk)
        array_bytes += chunk.array.nbytes if chunk.array is not None else 0
        array_bytes += sum(len(b) for b in chunk.blobs) if chunk.blobs is not None else 0
        if rows >= WINDOW_ROWS or array_bytes >= WINDOW_ARRAY_BYTES:
            yield window
            window, rows, array_bytes = [], 0, 0
    if window:
        yield window


@dataclass
class RayEngine:
    """Runs a job's chunks on Ray Data; ``write`` receives each chunk's rows in input order."""

    spec: BackendSpec
    address: str | None = None  # None: start a local Ray for this job
    server_decode: bool = False
    actors: int = 2
    decode_tasks: int = 0  # 0: as many as the cluster's CPUs allow
    stopping: bool = False

    def __post_init__(self) -> None:
        import ray

        self._ray = ray
        options = {
            "address": self.address,
            "ignore_reinit_error": True,
            "include_dashboard": False if self.address is None else None,
            "logging_level": logging.WARNING,
            "log_to_driver": False,
        }
        try:
            ray.init(**options)
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception when its node is slow to start
            if self.address is not None:
                raise
            # A local Ray whose raylet missed Ray's fixed 30 s start-up window (a loaded
            # machine): once more, from scratch.
            ray.shutdown()
            ray.init(**options)
        # Chunks travel as pickled Python objects (Ray says so at WARNING on every window).
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows are written in input order
        context.enable_progress_bars = False  # the CLI shows its own
        context.print_on_execution_start = False

    def close(self) -> None:
        self._ray.shutdown()

    def _dataset(self, window: list[Chunk], first: int):
        ray = self._ray
        items = [{"seq": first + i, "chunk": chunk} for i, chunk in enumerate(window)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        dataset = dataset.map(
            prepare_row,
            fn_kwargs={"server_decode": self.server_decode, "base": os.getcwd()},
            compute=ray.data.TaskPoolStrategy(size=self.decode_tasks or None),
            num_cpus=1,
        )
        # Half a CPU each: the actors mostly wait on onnxruntime or the server, and resources
        # unlike the tasks' keep Ray from fusing decoding into the actors.
        return dataset.map(
            ChunkClassifier,
            fn_constructor_args=(self.spec.without_secrets(),),
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_cpus=ACTOR_CPUS,
        )

    def run(self, chunks: Iterable[Chunk], write: Callable[[list[Row]], None]) -> Iterator[int]:
        """Classify every chunk; yields the number of rows written after each chunk."""
        seq = itertools.count()
        for window in _windows(chunks):
            if self.stopping:
                return
            first = next(seq)
            for _ in window[1:]:
                next(seq)
            expected = first
            for result in self._dataset(window, first).iter_rows():
                if result["seq"] != expected:  # preserve_order is what keeps the output valid
                    raise RuntimeError(f"Ray returned chunk {result['seq']} where {expected} was due")
                expected += 1
                rows = result["rows"]
                write(rows)
                yield len(rows)
                if self.stopping:
                    return
