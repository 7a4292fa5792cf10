"""The real server on a loopback port, through every API path, checked against onnxruntime."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mnist_serving.client import AsyncClient, Client
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.helpers import dark_on_light, encode

HERE = Path(__file__).parents[1]  # tests/


@pytest.fixture
def client(server):
    with Client(server.address) as c:
        yield c


def test_single_classify_equals_onnxruntime(client, mnist, onnx_reference):
    probabilities, labels = onnx_reference
    for i in range(50):
        p = client.classify(mnist.x_test[i], probabilities=True)
        assert p.label == labels[i]
        assert np.array_equal(p.probabilities, probabilities[i])
        assert (p.model_name, p.model_version) == ("mnist", "1")


def test_batch_of_the_test_set_equals_onnxruntime(client, mnist, onnx_reference, model_repository):
    probabilities, labels = onnx_reference
    result = client.classify_batch(mnist.x_test, batch_size=777, probabilities=True)
    assert np.array_equal(result.labels, labels)
    assert np.allclose(result.probabilities, probabilities, atol=1e-6)
    accuracy = float((result.labels == mnist.y_test).mean())
    sidecar = json.loads((model_repository / "mnist" / "1" / "model.json").read_text())
    assert accuracy == pytest.approx(sidecar["test_accuracy"], abs=1e-9)


def test_batch_bigger_than_max_batch_is_split_and_reassembled(server, mnist, onnx_reference):
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.ClassifierStub(ch)
        images = mnist.x_test[:3000]
        response = stub.ClassifyBatch(
            pb.ClassifyBatchRequest(raw=pb.RawBatch(data=images.tobytes(), count=3000))
        )
    assert response.count == 3000
    assert np.array_equal(np.frombuffer(response.labels, np.uint8), onnx_reference[1][:3000])


def test_image_list_forms_agree(client, mnist, onnx_reference):
    images = [mnist.x_test[0], mnist.x_test[1].astype(np.float32) / 255.0, mnist.x_test[2]]
    result = client.classify_batch(images)
    assert result.labels.tolist() == onnx_reference[1][:3].tolist()


def test_stream_of_the_whole_test_set_in_order(server, mnist, onnx_reference):
    def requests():
        for start in range(0, 10000, 250):
            part = mnist.x_test[start : start + 250]
            yield pb.ClassifyBatchRequest(raw=pb.RawBatch(data=part.tobytes(), count=len(part)))

    with grpc.insecure_channel(server.address) as channel:
        responses = list(pb_grpc.ClassifierStub(channel).ClassifyStream(requests(), timeout=120))
    labels = np.concatenate([np.frombuffer(r.labels, np.uint8) for r in responses])
    assert len(responses) == 40 and np.array_equal(labels, onnx_reference[1])


def test_async_client(server, mnist, onnx_reference):
    async def go():
        async with AsyncClient(server.address) as client:
            singles = await asyncio.gather(*(client.classify(mnist.x_test[i]) for i in range(32)))
            batch = await client.classify_batch(mnist.x_test[:2000], batch_size=300, concurrency=3)
            return [p.label for p in singles], batch.labels

    singles, batch = asyncio.run(go())
    assert singles == onnx_reference[1][:32].tolist()
    assert np.array_equal(batch, onnx_reference[1][:2000])


def test_v2_typed_and_raw_contents(server, mnist, onnx_reference):
    images = mnist.x_test[:5]
    with grpc.insecure_channel(server.address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        typed = v2.ModelInferRequest(model_name="mnist", id="req-1")
        tensor = typed.inputs.add(name="image", datatype="UINT8", shape=[5, 28, 28])
        tensor.contents.uint_contents.extend(images.ravel().tolist())
        response = stub.ModelInfer(typed)
        assert response.id == "req-1" and response.model_version == "1"
        outputs = {o.name: o for o in response.outputs}
        assert list(outputs["label"].contents.int64_contents) == onnx_reference[1][:5].tolist()
        assert not response.raw_output_contents
        raw = v2.ModelInferRequest(model_name="mnist", raw_input_contents=[images.tobytes()])
        raw.inputs.add(name="image", datatype="UINT8", shape=[5, 28, 28])
        raw.outputs.add(name="label")
        response = stub.ModelInfer(raw)
        assert [o.name for o in response.outputs] == ["label"]
        assert (
            np.frombuffer(response.raw_output_contents[0], "<i8").tolist() == onnx_reference[1][:5].tolist()
        )


def test_tritonclient_gets_the_same_answers(server, mnist, onnx_reference, tmp_path):
    np.save(tmp_path / "images.npy", mnist.x_test[:2000])
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "tritonclient_check.py"),
            server.address,
            str(tmp_path / "images.npy"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout)
    assert facts["live"] and facts["ready"] and facts["model_ready"] and not facts["unknown_ready"]
    meta = facts["metadata"]
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": ["-1", "28", "28"]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"probabilities": "FP32", "label": "INT64"}
    assert meta["versions"] == ["1"]
    assert facts["bad_input"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0].shape" in facts["bad_input"]["message"]
    out = np.load(tmp_path / "out.npz")
    assert np.array_equal(out["labels"], onnx_reference[1][:2000])
    assert np.array_equal(out["probabilities"], onnx_reference[0][:2000])
    assert np.array_equal(out["fp32_labels"], onnx_reference[1][:64])


def test_health_per_service_and_reflection(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mnist.v1.Classifier", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "mnist.v1.Classifier",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_expired_deadline_spends_no_inference(server, mnist):
    """Requests that expire while queued behind a long batch are dropped there: of each, at
    most its first run (which goes ahead of the long batch's later runs) was spent."""
    big = np.concatenate([mnist.x_train[:30000]] * 2)
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 128 << 20)]) as ch:
        stub = pb_grpc.ClassifierStub(ch)
        stub.Classify(pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[0].tobytes())))
        before = server.metric("mnist_serving_images_classified_total")
        long_call = stub.ClassifyBatch.future(
            pb.ClassifyBatchRequest(raw=pb.RawBatch(data=big.tobytes(), count=len(big))), timeout=120
        )
        while server.metric("mnist_serving_queue_depth", model="mnist") < 1:
            assert not long_call.done()
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as info:
                stub.ClassifyBatch(
                    pb.ClassifyBatchRequest(raw=pb.RawBatch(data=mnist.x_test[:1000].tobytes(), count=1000)),
                    timeout=0.005,
                )
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert long_call.result().count == len(big)
    # The long batch was run; of the five expired requests (four runs of 256 each), at most
    # their first runs: the rest was dropped, never run.
    extra = server.metric("mnist_serving_images_classified_total") - before - len(big)
    assert 0 <= extra <= 5 * 256 and extra % 256 == 0, extra


def test_metrics_count_requests(server, client, mnist):
    before = server.metric("mnist_serving_requests_total", api="mnist.v1", method="Classify", code="OK")
    for i in range(3):
        client.classify(mnist.x_test[i])
    after = server.metric("mnist_serving_requests_total", api="mnist.v1", method="Classify", code="OK")
    assert after == before + 3
    assert server.metric("mnist_serving_batch_size_count") > 0


def test_stream_answers_a_ping_pong_caller(server, mnist, onnx_reference):
    """A caller that waits for each answer before sending the next message is served."""

    async def go():
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = pb_grpc.ClassifierStub(channel).ClassifyStream(timeout=60)
            labels = []
            for start in range(0, 500, 100):
                part = mnist.x_test[start : start + 100]
                await call.write(pb.ClassifyBatchRequest(raw=pb.RawBatch(data=part.tobytes(), count=100)))
                labels.append(np.frombuffer((await call.read()).labels, np.uint8))
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            return np.concatenate(labels)

    assert np.array_equal(asyncio.run(go()), onnx_reference[1][:500])


def test_classify_can_return_what_the_model_saw(client, mnist):
    from mnist_serving.common import preprocess

    photo = sorted((Path(__file__).parents[2] / "docs" / "examples").glob("photo-*.jpg"))[0]
    answer = client.classify(photo.read_bytes(), preprocessed=True)
    assert answer.label == int(photo.stem.rsplit("-", 1)[1])
    np.testing.assert_array_equal(answer.preprocessed, preprocess.decode(photo.read_bytes())[0])
    raw = client.classify(mnist.x_test[0], preprocessed=True)
    np.testing.assert_array_equal(raw.preprocessed, mnist.x_test[0])
    assert client.classify(mnist.x_test[0]).preprocessed is None  # only when asked


def test_dark_on_light_pngs_at_other_sizes_are_classified(server, mnist, onnx_reference):
    """Digits the model gets right in raw form are still right when drawn as PNGs on paper."""
    labels = onnx_reference[1]
    chosen = [i for i in range(200) if labels[i] == mnist.y_test[i]][:100]
    sizes = [(56, 56), (100, 140), (200, 120), (33, 47)]
    pngs = [encode(dark_on_light(mnist.x_test[i], sizes[k % len(sizes)])) for k, i in enumerate(chosen)]
    with Client(server.address) as client:
        result = client.classify_batch(pngs, batch_size=64)
        single = client.classify(pngs[0])
    agree = (result.labels == mnist.y_test[chosen]).mean()
    assert agree >= 0.95, agree
    assert single.label == mnist.y_test[chosen[0]]
