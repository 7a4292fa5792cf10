"""Hot reload under load, broken versions refused, request ids, JSON logs, SIGTERM under load."""

import json
import shutil
import signal
import threading
import time

import grpc
import numpy as np
import pytest

from mnist_serving.common import model_repository as repo_layout
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc


def publish_copy(source_dir, repository, mutate=None):
    """Publish a copy of a version directory as the next version (atomically, as the exporter does)."""

    def write(staging, version):
        shutil.copy(source_dir / "model.onnx", staging / "model.onnx")
        sidecar = json.loads((source_dir / "model.json").read_text())
        sidecar["version"] = version
        (staging / "model.json").write_text(json.dumps(sidecar))
        if mutate:
            mutate(staging)

    return repo_layout.publish(repository, "mnist", write)[0]


@pytest.fixture
def live_repo(tmp_path, model_repository):
    repository = tmp_path / "models"
    shutil.copytree(model_repository / "mnist", repository / "mnist")
    return repository


def wait_metric(server, name, minimum, **labels):
    """Scrape until a counter reaches ``minimum`` (the server's own figures are the sync)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.metric(name, **labels) >= minimum:
            return
    raise AssertionError(f"{name}{labels} never reached {minimum}")


def test_hot_reload_under_a_stream_loses_nothing(start_server, live_repo, mnist, onnx_reference):
    server = start_server("--poll-interval", "0.1", repository=live_repo)
    original = live_repo / "mnist" / "1"
    seen_v2 = threading.Event()
    versions: list[str] = []

    def requests():
        i = 0
        while True:
            part = mnist.x_test[(i * 100) % 10000 : (i * 100) % 10000 + 100]
            yield pb.ClassifyBatchRequest(raw=pb.RawBatch(data=part.tobytes(), count=len(part)))
            i += 1
            if seen_v2.is_set() and i > len(versions) + 20:
                return
            if i > 200000:
                return

    try:
        with grpc.insecure_channel(server.address) as channel:
            call = pb_grpc.ClassifierStub(channel).ClassifyStream(requests(), timeout=300)
            published = False
            for i, response in enumerate(call):  # any failed call would raise here
                versions.append(response.model_version)
                # Every answer, before and after the swap, is the model's own (v2 is a copy of v1).
                start = (i * 100) % 10000
                expected = onnx_reference[1][start : start + 100]
                assert np.array_equal(np.frombuffer(response.labels, np.uint8), expected)
                if len(versions) == 50 and not published:
                    assert publish_copy(original, live_repo) == 2
                    published = True
                if response.model_version == "2":
                    seen_v2.set()
        assert versions[0] == "1" and versions[-1] == "2"
        switch = versions.index("2")
        assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}  # one clean switch
        assert server.metric("mnist_serving_model_loads_total", model="mnist", version="2", result="ok") == 1
        assert 'version="2"' in server.metrics_text().split("mnist_serving_model_info")[-1]
    finally:
        assert server.stop() == 0


# The last one is made by hand: the ones before it are published as the next versions.
BREAKAGES = ("corrupt onnx", "failed parity", "wrong contract", "missing onnx")


def test_broken_new_versions_are_refused_and_the_old_keeps_serving(start_server, live_repo, mnist, subtests):
    """Each way a new version can be broken, published in turn to one running server: each
    is refused, and version 1 answers every call meanwhile."""
    server = start_server("--poll-interval", "0.1", repository=live_repo)
    original = live_repo / "mnist" / "1"

    def mutate(staging, breakage):
        sidecar = json.loads((staging / "model.json").read_text())
        if breakage == "corrupt onnx":
            data = (staging / "model.onnx").read_bytes()
            (staging / "model.onnx").write_bytes(data[: len(data) // 2])
            sidecar.pop("model_sha256")
        elif breakage == "failed parity":
            sidecar["parity"]["passed"] = False
        elif breakage == "wrong contract":
            import onnx

            proto = onnx.load(staging / "model.onnx")
            proto.graph.output[1].name = "digit"
            proto.graph.node[-1].output[0] = "digit"
            onnx.save(proto, staging / "model.onnx")
            sidecar.pop("model_sha256")
        (staging / "model.json").write_text(json.dumps(sidecar))

    try:
        for version, breakage in enumerate(BREAKAGES, start=2):
            with subtests.test(breakage=breakage):
                if breakage == "missing onnx":  # an operator's hand-made directory without the model file
                    (live_repo / "mnist" / str(version)).mkdir()
                    shutil.copy(original / "model.json", live_repo / "mnist" / str(version) / "model.json")
                else:
                    assert publish_copy(original, live_repo, lambda d, b=breakage: mutate(d, b)) == version
                wait_metric(
                    server,
                    "mnist_serving_model_loads_total",
                    1,
                    model="mnist",
                    version=str(version),
                    result="failed",
                )
                with grpc.insecure_channel(server.address) as channel:
                    stub = pb_grpc.ClassifierStub(channel)
                    response = stub.Classify(
                        pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[0].tobytes()))
                    )
                assert response.model_version == "1" and response.prediction.label == 7
                assert f"refused model mnist version {version}" in server.log_text()
    finally:
        assert server.stop() == 0


def test_removed_versions_roll_back_then_keep_serving_from_memory(start_server, live_repo, mnist, tmp_path):
    """The repository is the source of truth: removing the newest version rolls back to the
    newest one left; removing every version keeps the loaded one serving."""
    server = start_server("--poll-interval", "0.1", repository=live_repo)

    def classify():
        with grpc.insecure_channel(server.address) as channel:
            return pb_grpc.ClassifierStub(channel).Classify(
                pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[0].tobytes()))
            )

    try:
        backup = tmp_path / "backup"
        shutil.copytree(live_repo / "mnist" / "1", backup)
        publish_copy(backup, live_repo)
        wait_metric(server, "mnist_serving_model_loads_total", 1, model="mnist", version="2", result="ok")
        assert classify().model_version == "2"
        shutil.rmtree(live_repo / "mnist" / "2")
        wait_metric(server, "mnist_serving_model_loads_total", 2, model="mnist", version="1", result="ok")
        assert classify().model_version == "1"
        shutil.rmtree(live_repo / "mnist" / "1")
        server.wait_serving()
        response = classify()
        assert (response.model_version, response.prediction.label) == ("1", 7)
    finally:
        assert server.stop() == 0


def test_request_id_is_echoed_and_logged_in_json(start_server, live_repo, mnist):
    server = start_server("--log-format", "json", repository=live_repo)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        _, call = stub.Classify.with_call(
            pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[0].tobytes())),
            metadata=(("x-request-id", "abc-123"),),
        )
        assert ("x-request-id", "abc-123") in tuple(call.trailing_metadata())
        _, call = stub.Classify.with_call(pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[0].tobytes())))
        generated = dict(call.trailing_metadata())["x-request-id"]
        assert len(generated) >= 16 and generated != "abc-123"
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(
                pb.ClassifyRequest(image=pb.Image(raw=b"123")), metadata=(("x-request-id", "bad-1"),)
            )
        assert dict(info.value.trailing_metadata())["x-request-id"] == "bad-1"
    lines = [json.loads(line) for line in server.log_text().splitlines()]
    failure = next(line for line in lines if line.get("request_id") == "bad-1")
    assert failure["code"] == "INVALID_ARGUMENT" and "image.raw" in failure["message"]
    assert any("listening on" in line["message"] for line in lines)
    assert any("batching on" in line["message"] for line in lines)


def test_sigterm_under_load_loses_no_accepted_request(start_server, live_repo, mnist):
    """Many callers; SIGTERM mid-way: every call is answered correctly or refused UNAVAILABLE."""
    server = start_server(repository=live_repo)
    results: list[tuple[str, object]] = []
    lock = threading.Lock()
    started = threading.Barrier(9)

    def caller(seed):
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            started.wait()
            for i in range(400):
                k = (seed * 400 + i) % 10000
                try:
                    r = stub.ClassifyBatch(
                        pb.ClassifyBatchRequest(
                            raw=pb.RawBatch(data=mnist.x_test[k : k + 1].tobytes(), count=1)
                        ),
                        timeout=30,
                    )
                    outcome = ("OK", int(np.frombuffer(r.labels, np.uint8)[0]), k)
                except grpc.RpcError as exc:
                    outcome = (exc.code().name, exc.details(), k)
                with lock:
                    results.append(outcome)
                if outcome[0] != "OK":
                    return

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    started.wait()
    wait_metric(server, "mnist_serving_requests_total", 200)
    server.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    assert server.process.wait(timeout=60) == 0
    server.stop()
    codes = {r[0] for r in results}
    assert codes <= {"OK", "UNAVAILABLE"}, [r for r in results if r[0] != "OK"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(live_repo / "mnist" / "1" / "model.onnx"))
    expected = session.run(["label"], {"image": mnist.x_test})[0]
    ok = [r for r in results if r[0] == "OK"]
    assert len(ok) >= 200 and all(expected[k] == label for _, label, k in ok)
