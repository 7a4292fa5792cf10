"""Reliability: a short mixed soak, vanishing clients, restarts, killed workers, export crashes.

`make soak` runs the same soak for minutes; figures are in docs/reliability.md.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from mnist_serving.client import ClassifyError, Client
from mnist_serving.common import model_repository as layout
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.process_tree import descendants
from tests.server_process import STARTUP_TIMEOUT

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
import soak  # noqa: E402

from tests.helpers import digit_file, free_port

SOAK_SECONDS = 12


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.mark.slow
def test_short_soak_mixing_every_api(start_server, mnist, onnx_reference):
    server = start_server()
    result = asyncio.run(
        soak.soak(server.address, server.process.pid, SOAK_SECONDS, 16, mnist.x_test, onnx_reference[1])
    )
    assert result["sent"] > 500 and all(result["by_api"][api] > 0 for api in soak.APIS)
    assert (result["lost"], result["wrong"], result["refused"]) == (0, 0, 0), result["failures"]
    assert result["answered"] == result["sent"]
    assert result["rss_end_mb"] <= result["rss_warm_mb"] * 1.15 + 16, result  # flat after warm-up
    assert result["fds_end"] <= result["fds_warm"] + 8, result


def test_vanishing_cancelling_and_silent_clients_leave_nothing_behind(server, mnist):
    baseline_fds = _fds(server.process.pid)

    async def misbehave():
        for _ in range(10):
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.ClassifierStub(channel)
                # A stream that sends a few batches, then the client vanishes mid-way.
                call = stub.ClassifyStream()
                for start in (0, 300):
                    await call.write(
                        pb.ClassifyBatchRequest(
                            raw=pb.RawBatch(data=mnist.x_test[start : start + 300].tobytes(), count=300)
                        )
                    )
                await call.read()
                call.cancel()
                # A stream opened and never written to, then dropped.
                silent = stub.ClassifyStream()
                await asyncio.sleep(0)
                silent.cancel()
                # A big unary call cancelled while queued or running.
                big = stub.ClassifyBatch(
                    pb.ClassifyBatchRequest(raw=pb.RawBatch(data=mnist.x_test[:5000].tobytes(), count=5000))
                )
                await asyncio.sleep(0)
                big.cancel()

    asyncio.run(misbehave())
    with Client(server.address) as client:  # the server is fine, and nothing is stuck
        assert client.classify_batch(mnist.x_test[:1000]).labels.shape == (1000,)
        assert client.health() == "SERVING"
    assert server.metric("mnist_serving_inflight_requests") == 0
    assert server.metric("mnist_serving_queue_depth", model="mnist") == 0
    assert _fds(server.process.pid) <= baseline_fds + 8


def test_client_retries_succeed_against_a_restarted_server(start_server, mnist):
    port = str(free_port())
    first = start_server("--port", port)
    with Client(f"127.0.0.1:{port}", retries=10, backoff=0.1, timeout=10) as client:
        assert client.classify(mnist.x_test[0]).label == 7
        assert first.stop() == 0
        restart = threading.Thread(target=start_server, args=("--port", port), kwargs={"wait": False})
        restart.start()
        try:
            # Sent while no server is listening: UNAVAILABLE, retried with backoff until the new one answers.
            assert client.classify(mnist.x_test[1]).label == 2
        finally:
            restart.join()


def expected_labels(repository: Path, mnist) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(repository / "mnist" / "1" / "model.onnx"))
    return session.run(["label"], {"image": mnist.x_test[:100]})[0]


def _wait_log(path: Path, pattern: str, count: int, timeout: float = 120) -> list[re.Match]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(re.finditer(pattern, path.read_text()))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} seen fewer than {count} times in {path}")


def _wait_gone(pid: int, timeout: float = 30) -> None:
    """Until the process has exited (a zombie waiting for its parent counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)  # polling another process's state
    raise AssertionError(f"process {pid} did not exit")


def test_a_killed_worker_is_replaced_and_the_others_keep_serving(start_server, model_repository, mnist):
    server = start_server("--workers", "2", "--metrics-port", "-1", wait=False)
    log = server.log_path
    _wait_log(log, r"ready: health SERVING", 2)
    pids = [int(m.group(2)) for m in _wait_log(log, r"worker (\d) started \(pid (\d+)\)", 2)]
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    _wait_gone(victim)  # its listening socket is closed once the process is gone
    expected = [int(x) for x in expected_labels(model_repository, mnist)[:60]]

    def replaced() -> bool:
        text = log.read_text()
        return len(re.findall(r"worker 0 started", text)) == 2 and text.count("ready: health SERVING") == 3

    # New connections without retries, from the moment the killed worker is gone until 30
    # calls after its replacement turned SERVING: a replacement opens the shared port only
    # once its model is loaded, so none of these calls may fail.
    lost: list[tuple[int, str]] = []
    calls, after = 0, 0
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while after < 30 or calls < 60:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        after += replaced()
        with Client(server.address, retries=0) as client:
            try:
                assert client.classify(mnist.x_test[calls % 60]).label == expected[calls % 60]
            except ClassifyError as exc:
                lost.append((calls, f"{exc.code}: {exc}"))
        calls += 1
    assert lost == [], lost
    # With the client library's default retries, none is lost.
    labels = []
    for i in range(60):
        with Client(server.address) as client:
            labels.append(client.classify(mnist.x_test[i]).label)
    assert labels == expected
    restarted = _wait_log(log, r"worker 0 started \(pid (\d+)\)", 2)
    assert int(restarted[-1].group(1)) != victim
    _wait_log(log, r"ready: health SERVING", 3)
    assert "exited with -9; restarting" in log.read_text()


def test_export_crash_half_way_publishes_nothing(tmp_path, model_repository):
    repository = tmp_path / "models"
    shutil.copytree(model_repository / "mnist", repository / "mnist")

    def crash(staging, version):
        (staging / "model.onnx").write_bytes(b"half a model")
        raise KeyboardInterrupt("killed half-way")

    with pytest.raises(KeyboardInterrupt):
        layout.publish(repository, "mnist", crash)
    assert layout.list_versions(repository, "mnist") == [1]
    left = sorted(p.name for p in (repository / "mnist").iterdir())
    assert [name for name in left if name != layout.HIGHEST_VERSION_FILE] == ["1"]  # no staging left
    # A staging directory left by a hard kill is invisible to readers.
    leftover = repository / "mnist" / ".staging-crashed"
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(b"half")
    assert layout.list_versions(repository, "mnist") == [1]
    assert layout.published_model(repository, "mnist") == repository / "mnist" / "1" / "model.onnx"


def test_token_refusals_hold_under_load(start_server, mnist):
    server = start_server("--auth-token", "s3cret")
    outcomes: list[tuple[bool, str]] = []
    lock = threading.Lock()

    def caller(good: bool):
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            metadata = (("authorization", "Bearer s3cret" if good else "Bearer guess"),)
            for i in range(100):
                try:
                    stub.Classify(
                        pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[i].tobytes())),
                        metadata=metadata,
                        timeout=30,
                    )
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    outcomes.append((good, code))

    threads = [threading.Thread(target=caller, args=(i % 2 == 0,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        assert server.stop() == 0
    assert len(outcomes) == 800
    assert {code for good, code in outcomes if good} == {"OK"}
    assert {code for good, code in outcomes if not good} == {"UNAUTHENTICATED"}
    assert json.dumps(outcomes).count("UNAUTHENTICATED") == 400


def test_the_decode_pool_heals_after_every_child_is_killed(start_server, mnist):
    """As the OOM killer would: kill -9 of every process the server started (the decode
    workers and their fork server). Encoded images are decoded again at once; none fails."""

    server = start_server("--decode-workers", "1")
    image = pb.Image(encoded=digit_file(mnist.x_test[0]))
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        assert stub.Classify(pb.ClassifyRequest(image=image), timeout=30).prediction.label == 7
        victims = descendants(server.process.pid)
        assert victims, "no decode processes to kill"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        for pid in victims:
            _wait_gone(pid)
        batch = pb.ClassifyBatchRequest(images=[image] * 20)
        for _ in range(5):
            response = stub.ClassifyBatch(batch, timeout=60)
            assert not response.errors and set(response.labels) == {7}
    assert "ready" in server.log_text() and descendants(server.process.pid)


def test_ctrl_c_on_the_process_group_drains_without_tracebacks(start_server, mnist):
    """A terminal's Ctrl-C reaches the whole process group: the server, its fork server and
    its decode workers. The server drains and exits 0; the others print nothing."""

    server = start_server("--decode-workers", "2", prefix=("setsid",))
    log = server.log_path
    with grpc.insecure_channel(server.address) as channel:  # the decode workers have worked
        request = pb.ClassifyBatchRequest(images=[pb.Image(encoded=digit_file(mnist.x_test[0]))] * 4)
        assert not pb_grpc.ClassifierStub(channel).ClassifyBatch(request, timeout=30).errors
    assert os.getpgid(server.process.pid) == server.process.pid  # its own group, as in a terminal
    os.killpg(server.process.pid, signal.SIGINT)
    assert server.process.wait(timeout=60) == 0
    text = log.read_text()
    assert "draining" in text and "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
