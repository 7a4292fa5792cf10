"""The client library's one core: the same methods on both clients, deadlines and retries per
call, windowed batches; against a small real gRPC server whose answers the test scripts."""

from __future__ import annotations

import _thread
import asyncio
import inspect
import json
import math
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from mnist_serving.client import AsyncClient, ClassifyError, Client
from mnist_serving.client.batch.job import PRELOAD
from mnist_serving.client.options import MAX_BACKOFF
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc


class Scripted(pb_grpc.ClassifierServicer):
    """Answers each call with the next scripted outcome: "ok", a status code, or "hold" (until
    released); counts calls and the most batch calls in flight at once."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.calls = 0
        self.in_flight = self.most_in_flight = 0
        self.released = threading.Event()
        self.lock = threading.Lock()

    def _outcome(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls += 1
            outcome = self.script.pop(0) if self.script else "ok"
        if outcome == "hold":
            self.released.wait(30)
        elif outcome != "ok":
            context.abort(getattr(grpc.StatusCode, outcome), f"scripted {outcome}")

    def Classify(self, request, context):
        self._outcome(context)
        return pb.ClassifyResponse(
            prediction=pb.Prediction(label=3, confidence=0.5), model_name="mnist", model_version="1"
        )

    def ClassifyBatch(self, request, context):
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self._outcome(context)
            count = request.raw.count
            first = np.frombuffer(request.raw.data, np.uint8).reshape(count, -1)[:, 0]
            return pb.ClassifyBatchResponse(  # the label is the first pixel: order shows
                labels=first.astype(np.uint8).tobytes(),
                confidences=np.ones(count, "<f4").tobytes(),
                count=count,
                model_name="mnist",
                model_version="1",
            )
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def scripted():
    servers = []

    def start(*script: str) -> tuple[str, Scripted]:
        servicer = Scripted(list(script))
        server = grpc.server(futures.ThreadPoolExecutor(8))
        pb_grpc.add_ClassifierServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append((server, servicer))
        return f"127.0.0.1:{port}", servicer

    yield start
    for server, servicer in servers:
        servicer.released.set()
        server.stop(0)


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_both_clients_have_the_same_public_methods_and_signatures():
    sync, asynchronous = _public(Client), _public(AsyncClient)
    assert sync.keys() == asynchronous.keys()
    for name, signature in sync.items():
        assert signature == asynchronous[name], name
    for method in ("classify", "classify_batch"):
        assert {"timeout", "retries"} <= sync[method].parameters.keys()


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = f"import json, sys; {statement}; print(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_importing_the_library_loads_no_batch_or_decoding_stack():
    statement = "from mnist_serving.client import *"  # every name of __all__, each found where it lives
    assert _loaded_after(statement, ("tqdm", "pyarrow", "ray", "cv2", "PIL")) == []
    assert _loaded_after(statement, ("grpc",)) == ["grpc"]  # the check above can fail


def test_a_decode_worker_loads_no_grpc():
    """The batch tool's decode workers start with their fork server's preload (``PRELOAD``):
    the package's names load when used, so gRPC stays out of every worker."""
    preload = "; ".join(f"import {name}" for name in PRELOAD if not name.endswith("forkserver_preload"))
    assert _loaded_after(preload, ("grpc", "google.protobuf")) == []
    assert _loaded_after(preload, ("cv2", "PIL")) == ["cv2", "PIL"]  # the check above can fail


def test_the_batch_tools_own_process_loads_no_decoding_stack():
    """The job's process never decodes (its workers do): OpenCV and Pillow are imported by the
    fork server, while the job connects and lists its inputs."""
    statement = "import mnist_serving.client.batch.cli"
    assert _loaded_after(statement, ("cv2", "PIL")) == []
    assert _loaded_after(statement, ("grpc",)) == ["grpc"]  # the check above can fail


def test_a_call_timeout_is_a_deadline_for_that_call(scripted):
    address, servicer = scripted("hold")
    with Client(address, timeout=60) as client:
        started = time.monotonic()
        with pytest.raises(ClassifyError) as info:
            client.classify(np.zeros((28, 28), np.uint8), timeout=0.5)
        took = time.monotonic() - started
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert took < 30  # the call's own deadline, not the client's 60 s
    assert servicer.calls == 1  # a deadline is not retried


def test_retries_follow_the_call_then_the_client(scripted):
    address, servicer = scripted("UNAVAILABLE", "RESOURCE_EXHAUSTED", "UNAVAILABLE")
    with Client(address, retries=5, backoff=0.01) as client:
        with pytest.raises(ClassifyError) as info:
            client.classify(np.zeros((28, 28), np.uint8), retries=1)
        assert info.value.code == "RESOURCE_EXHAUSTED" and servicer.calls == 2
        assert client.classify(np.zeros((28, 28), np.uint8)).label == 3  # the client's 5 retries
        assert servicer.calls == 4 and client.retries_made == 2


def test_a_call_cut_off_in_transport_is_retried(scripted):
    """UNKNOWN is what a proxy's reset looks like when the replica behind it dies mid-call; the
    server never answers it itself, and a classification is safe to repeat."""
    address, servicer = scripted("UNKNOWN")
    with Client(address, retries=2, backoff=0.01) as client:
        assert client.classify(np.zeros((28, 28), np.uint8)).label == 3
    assert servicer.calls == 2 and client.retries_made == 1


def test_other_statuses_are_not_retried(scripted):
    address, servicer = scripted("INVALID_ARGUMENT")
    with Client(address, retries=5, backoff=0.01) as client, pytest.raises(ClassifyError) as info:
        client.classify(np.zeros((28, 28), np.uint8))
    assert info.value.code == "INVALID_ARGUMENT" and servicer.calls == 1


def test_retries_stop_at_the_deadline(scripted):
    address, servicer = scripted(*["UNAVAILABLE"] * 1000)
    with Client(address, retries=1000, backoff=0.05) as client, pytest.raises(ClassifyError):
        client.classify(np.zeros((28, 28), np.uint8), timeout=1.0)
    assert 1 < servicer.calls < 200  # retried, then stopped by the deadline, not by the count


def test_backoff_doubles_up_to_its_cap(scripted, monkeypatch):
    """After a long outage the next try comes within the cap of the server's return, not a
    doubled delay later."""
    address, servicer = scripted(*["UNAVAILABLE"] * 8)
    delays: list[float] = []

    async def no_wait(delay: float) -> None:
        delays.append(delay)

    async def run():
        async with AsyncClient(address, retries=8, backoff=0.5) as client:
            monkeypatch.setattr(asyncio, "sleep", no_wait)
            return await client.classify(np.zeros((28, 28), np.uint8), timeout=math.inf)

    assert asyncio.run(run()).label == 3 and servicer.calls == 9
    assert len(delays) == 8 and 0.25 <= delays[0] <= 0.75
    assert all(MAX_BACKOFF / 2 <= d <= MAX_BACKOFF * 1.5 for d in delays[3:]), delays


@pytest.mark.parametrize("asynchronous", [False, True])
def test_batches_are_windowed_and_answered_in_order(scripted, asynchronous):
    address, servicer = scripted("UNAVAILABLE")  # one chunk fails once and is retried in place
    images = np.zeros((50, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(50)
    if asynchronous:

        async def run():
            async with AsyncClient(address, backoff=0.01) as client:
                return await client.classify_batch(images, batch_size=4, concurrency=3)

        result = asyncio.run(run())
    else:
        with Client(address, backoff=0.01) as client:
            result = client.classify_batch(images, batch_size=4, concurrency=3)
    assert result.labels.tolist() == list(range(50))
    assert 1 <= servicer.most_in_flight <= 3 and servicer.calls == 14


def test_ctrl_c_while_waiting_stops_the_call(scripted):
    """A signal handled in the caller's thread ends its wait; the call in flight is cancelled."""
    address, servicer = scripted("hold")
    client = Client(address, timeout=60)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            client.classify(np.zeros((28, 28), np.uint8))
    finally:
        timer.cancel()
        client.close()
    assert servicer.calls == 1
