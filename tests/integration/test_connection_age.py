"""--max-connection-age: a client connected before a second replica started reaches both
once its connection has been aged out and reopened (as after a scale-up behind DNS)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc
import numpy as np

from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.helpers import free_port, wait_until
from tests.server_process import ServerProcess

LAUNCHER = (sys.executable, str(Path(__file__).parents[1] / "reuseport_server.py"))
# Generated request ids start with a random prefix of 16 hex digits per server process.
PROCESS_PREFIX = 16


def answered_by(stub: pb_grpc.ClassifierStub) -> str:
    """The process that answered one call. A connection that lands on the second replica while
    it still loads its model is answered UNAVAILABLE ("retry shortly"; its port opens first,
    and a health check on the shared port may have been answered by the first replica): the
    call is repeated then, as the client library does."""
    request = pb.ClassifyRequest(image=pb.Image(raw=np.zeros(784, np.uint8).tobytes()))

    def attempt() -> grpc.Call | None:
        try:
            return stub.Classify.with_call(request, timeout=10)[1]
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return None  # tried again after a client's backoff

    call = wait_until(attempt, 10, "an answer other than UNAVAILABLE", interval=0.1)
    request_id = dict(call.trailing_metadata())["x-request-id"]
    return request_id[:PROCESS_PREFIX]


def test_an_aged_connection_reconnects_and_reaches_a_replica_started_later(model_repository, tmp_path):
    port = str(free_port())
    flags = ("--port", port, "--max-connection-age", "0.5", "--max-connection-age-grace", "1")
    first = ServerProcess(model_repository, *flags, program=LAUNCHER, log_path=tmp_path / "first.log")
    second = None
    try:
        first.wait_serving()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ClassifierStub(channel)
            seen = {answered_by(stub)}  # connected: every call goes to the first replica
            second = ServerProcess(
                model_repository, *flags, program=LAUNCHER, log_path=tmp_path / "second.log"
            )
            second.wait_serving()
            deadline = time.monotonic() + 60
            while len(seen) < 2 and time.monotonic() < deadline:
                seen.add(answered_by(stub))  # the kernel spreads each new connection
        assert len(seen) == 2, f"after 60 s every call still went to one replica: {seen}"
    finally:
        for server in (first, second):
            if server is not None:
                assert server.stop() == 0, server.log_text()[-2000:]
