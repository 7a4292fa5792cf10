"""Start-up, readiness, overload and shutdown of the real server."""

import asyncio
import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from mnist_serving.server.app import MnistServer
from mnist_serving.server.config import ServerConfig
from tests.helpers import free_port

NO_PORTS = ["--metrics-port", "-1", "--http-port", "-1"]


def _serve(args, timeout=120):
    exe = shutil.which("mnist-serve", path=str(__import__("pathlib").Path(sys.executable).parent))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_missing_repository_is_a_clear_error(tmp_path):
    done = _serve(["--model-repository", str(tmp_path / "nothing"), "--port", "0", *NO_PORTS])
    assert done.returncode == 2
    assert "no such directory" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("keep_digest", [True, False])
def test_corrupt_model_is_a_clear_error(tmp_path, model_repository, keep_digest):
    repo = tmp_path / "models"
    shutil.copytree(model_repository / "mnist", repo / "mnist")
    (repo / "mnist" / "1" / "model.onnx").write_bytes(b"\x08\x07garbage")
    if not keep_digest:  # without the sidecar's digest, nothing vouches for the bytes: refused
        sidecar = json.loads((repo / "mnist" / "1" / "model.json").read_text())
        del sidecar["model_sha256"]
        (repo / "mnist" / "1" / "model.json").write_text(json.dumps(sidecar))
    done = _serve(["--model-repository", str(repo), "--port", "0", *NO_PORTS])
    assert done.returncode == 2
    expected = "does not match the sidecar" if keep_digest else "no model_sha256"
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_cuda_without_gpu_is_a_clear_error(model_repository):
    done = _serve(
        [
            "--model-repository",
            str(model_repository),
            "--device",
            "cuda",
            "--port",
            "0",
            "--metrics-port",
            "-1",
        ]
    )
    assert done.returncode == 2
    assert "--device cuda" in done.stderr


def test_health_is_not_serving_until_the_model_is_loaded(model_repository):
    """In-process: the port is open and answering before the model is loaded."""

    async def go():
        server = MnistServer(
            ServerConfig(
                model_repository=model_repository, host="127.0.0.1", port=0, metrics_port=-1, http_port=0
            )
        )
        await server.start_transport()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            before = (await health.Check(health_pb2.HealthCheckRequest())).status
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.ClassifierStub(channel).Classify(
                    pb.ClassifyRequest(image=pb.Image(raw=bytes(784)))
                )
            early = info.value.code()
            await server.load_models()
            after = (await health.Check(health_pb2.HealthCheckRequest())).status
            await server.stop()
        return before, early, after

    before, early, after = asyncio.run(go())
    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert early == grpc.StatusCode.UNAVAILABLE
    assert after == health_pb2.HealthCheckResponse.SERVING


def _connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_worker_sharing_the_port_opens_it_only_once_its_model_is_loaded(model_repository):
    """With --workers the kernel hands each new connection to any socket listening on the port;
    a replacement worker still loading would answer UNAVAILABLE while its siblings serve."""
    port = free_port()

    async def go():
        server = MnistServer(
            ServerConfig(
                model_repository=model_repository, host="127.0.0.1", port=port, metrics_port=-1, http_port=-1
            ),
            reuse_port=True,
        )
        loading, release = threading.Event(), threading.Event()
        load_initial = server.store.load_initial

        def held_load():  # the real load, held until the port has been probed
            loading.set()
            release.wait(60)
            return load_initial()

        server.store.load_initial = held_load
        starting = asyncio.create_task(server.start())
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, loading.wait, 60)
        refused_while_loading = await loop.run_in_executor(None, _connection_refused, port)
        release.set()
        await starting
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())).status
            answer = await pb_grpc.ClassifierStub(channel).Classify(
                pb.ClassifyRequest(image=pb.Image(raw=bytes(784)))
            )
        await server.stop()
        return refused_while_loading, health, answer

    refused_while_loading, health, answer = asyncio.run(go())
    assert refused_while_loading
    assert health == health_pb2.HealthCheckResponse.SERVING
    assert 0 <= answer.prediction.label <= 9


def test_every_service_answers_through_its_generic_handler(model_repository):
    """grpc.aio keeps a pending task per "registered method" and waits on all of them for each
    call it accepts; the server registers none, so a call's cost does not grow with Triton's
    26 methods. The services still answer."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
    from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc

    async def go():
        server = MnistServer(
            ServerConfig(
                model_repository=model_repository, host="127.0.0.1", port=0, metrics_port=-1, http_port=-1
            )
        )
        await server.start_transport()
        await server.load_models()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            classified = await pb_grpc.ClassifierStub(channel).Classify(
                pb.ClassifyRequest(image=pb.Image(raw=bytes(784)))
            )
            ready = await v2_grpc.GRPCInferenceServiceStub(channel).ModelReady(
                v2.ModelReadyRequest(name="mnist")
            )
            listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            services = [s.name async for r in listing for s in r.list_services_response.service]
            pending = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]
        await server.stop()
        return health.status, classified, ready.ready, services, pending

    status, classified, ready, services, pending = asyncio.run(go())
    assert status == health_pb2.HealthCheckResponse.SERVING and ready
    assert 0 <= classified.prediction.label <= 9 and classified.prediction.confidence > 0
    assert "inference.GRPCInferenceService" in services and "mnist.v1.Classifier" in services
    assert "AioServer._request_call" in pending  # the generic path waits for the next call
    assert [name for name in pending if name == "AioServer._request_registered_call"] == []


def _ready_status(port: int) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_ready_endpoint_is_200_only_while_taking_calls(model_repository):
    """What an HTTP-checking load balancer (the compose `lb`) reads: loading, serving, draining."""

    async def go():
        server = MnistServer(
            ServerConfig(
                model_repository=model_repository, host="127.0.0.1", port=0, metrics_port=0, http_port=0
            )
        )
        loop = asyncio.get_running_loop()
        await server.start_transport()
        loading = await loop.run_in_executor(None, _ready_status, server.metrics_port)
        await server.load_models()
        serving = await loop.run_in_executor(None, _ready_status, server.metrics_port)
        await server.stop()
        stopped = await loop.run_in_executor(None, _ready_status, server.metrics_port)
        return loading, serving, stopped

    assert asyncio.run(go()) == (503, 200, 503)


def test_no_published_model_exits_2_before_opening_the_port(tmp_path):
    (tmp_path / "models" / "mnist").mkdir(parents=True)
    done = _serve(["--model-repository", str(tmp_path / "models"), "--port", "0", *NO_PORTS])
    assert done.returncode == 2
    assert "no published 'mnist' model" in done.stderr and "Traceback" not in done.stderr
    assert "serving gRPC" not in done.stdout  # never listened, so no supervisor sees it up


def test_a_port_in_use_is_one_line_and_exit_2(model_repository):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(
            ["--model-repository", str(model_repository), "--host", "127.0.0.1", "--port", str(port)]
            + NO_PORTS
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("mnist-serve:")] == [
        f"mnist-serve: --port {port}: cannot listen on 127.0.0.1:{port} (in use, or not an address here)"
    ]


def test_metrics_listen_where_told(start_server):
    server = start_server("--metrics-host", "127.0.0.1")
    assert "mnist_serving_requests" in server.metrics_text()  # reachable on loopback
    import socket

    addresses = {entry[4][0] for entry in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for address in addresses - {"127.0.0.1"}:  # not reachable on the machine's other addresses
        with socket.socket() as probe:
            probe.settimeout(5)
            assert probe.connect_ex((address, server.metrics_port)) != 0


def test_overload_answers_resource_exhausted_then_recovers(start_server, mnist):
    server = start_server("--max-queue", "2", "--max-batch-size", "64")

    async def flood():
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            request = pb.ClassifyBatchRequest(raw=pb.RawBatch(data=mnist.x_test[:2048].tobytes(), count=2048))
            calls = [stub.ClassifyBatch(request, timeout=60) for _ in range(40)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(flood())
    codes = [r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    refused = next(r for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert "queue full" in refused.details()
    with grpc.insecure_channel(server.address) as channel:  # full service once load drops
        response = pb_grpc.ClassifierStub(channel).ClassifyBatch(
            pb.ClassifyBatchRequest(raw=pb.RawBatch(data=mnist.x_test[:100].tobytes(), count=100))
        )
        assert response.count == 100


def test_sigterm_answers_accepted_requests_and_exits_zero(start_server, mnist):
    server = start_server()
    big = mnist.x_train  # a long job: still running when SIGTERM arrives
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 256 << 20)]) as ch:
        call = pb_grpc.ClassifierStub(ch).ClassifyBatch.future(
            pb.ClassifyBatchRequest(raw=pb.RawBatch(data=big.tobytes(), count=len(big))), timeout=120
        )
        while server.metric("mnist_serving_queue_depth", model="mnist") < 1:
            assert not call.done()
        server.process.send_signal(signal.SIGTERM)
        assert call.result().count == len(big)
    assert server.process.wait(timeout=60) == 0
    server.stop()
    log = server.log_text()
    assert "SIGTERM: draining" in log and "stopped" in log


def _until_a_slot_frees(call, limit_s: float = 30.0):
    """gRPC frees a finished call's slot just after its answer is sent: retry while refused."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise


def test_calls_beyond_max_concurrent_rpcs_are_refused_before_any_work(start_server, mnist):
    server = start_server("--max-concurrent-rpcs", "1")
    one = pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[0].tobytes()))
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)

        def open_stream():
            # A queue of its own: a refused attempt's request thread must not take this one's.
            requests: queue.Queue = queue.Queue()
            stream = stub.ClassifyStream(iter(requests.get, None), timeout=60)
            requests.put(pb.ClassifyBatchRequest(raw=pb.RawBatch(data=mnist.x_test[:1].tobytes(), count=1)))
            try:
                assert next(stream).count == 1
            except grpc.RpcError:
                requests.put(None)
                raise
            return stream, requests

        stream, requests = _until_a_slot_frees(open_stream)  # the open stream holds the one slot
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(one, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        requests.put(None)  # the stream ends, its slot frees, and calls are taken again
        assert list(stream) == []
        answer = _until_a_slot_frees(lambda: stub.Classify(one, timeout=10))
        assert answer.prediction.label >= 0


def test_an_http_port_in_use_is_one_line_and_exit_2(model_repository):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(
            ["--model-repository", str(model_repository), "--host", "127.0.0.1", "--port", "0"]
            + ["--metrics-port", "-1", "--http-port", str(port)]
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("mnist-serve:")]
    assert lines == [f"mnist-serve: --http-port {port}: cannot listen on 127.0.0.1 (Address already in use)"]


def test_the_start_up_lines_are_the_ones_operations_md_lists(start_server):
    """docs/operations.md names the machine-readable stdout lines in the order they come."""
    server = start_server()
    printed = [re.sub(r" on .*", "", line.strip()) for line in server.stdout if line.startswith("serving ")]
    assert printed == ["serving metrics", "serving HTTP", "serving gRPC"]
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    documented = re.findall(r"`(serving (?:metrics|HTTP|gRPC)) on HOST:PORT`", re.sub(r"\s+", " ", doc))
    assert documented == printed
