"""Every bad input gets INVALID_ARGUMENT naming the field, and the server keeps serving."""

import functools
import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc

ZERO = bytes(784)


def png(size=(40, 40), mode="L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 255).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, format="JPEG")
    return buffer.getvalue()[:100]


@functools.cache
def bomb(side: int = 30000) -> bytes:
    """A real PNG of side×side black 1-bit pixels: about 100 kB that would take 900 million
    pixels to decode. Written chunk by chunk, never held as an image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + -(-side // 8))  # filter byte 0, then the row's bits
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def infer(
    datatype="UINT8",
    shape=(1, 28, 28),
    raw=None,
    name="image",
    model="mnist",
    version="",
    outputs=(),
    typed=None,
    extra_inputs=0,
):
    request = v2.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    if typed is not None:
        getattr(tensor.contents, typed[0]).extend(typed[1])
    for i in range(extra_inputs):
        request.inputs.add(name=f"extra{i}", datatype="UINT8", shape=[1])
    if raw is not None:
        request.raw_input_contents.extend(raw)
    for o in outputs:
        request.outputs.add(name=o)
    return request


OWN_CASES = {
    "raw too short": ("Classify", pb.ClassifyRequest(image=pb.Image(raw=bytes(100))), "image.raw"),
    "raw too long": ("Classify", pb.ClassifyRequest(image=pb.Image(raw=bytes(785))), "image.raw"),
    "no image data": ("Classify", pb.ClassifyRequest(image=pb.Image()), "image"),
    "pixels wrong count": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(pixels=pb.FloatPixels(values=[0.5] * 10))),
        "image.pixels.values",
    ),
    "pixels NaN": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(pixels=pb.FloatPixels(values=[float("nan")] * 784))),
        "NaN",
    ),
    "pixels Inf": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(pixels=pb.FloatPixels(values=[float("inf")] * 784))),
        "NaN or Inf",
    ),
    "pixels out of range": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(pixels=pb.FloatPixels(values=[1.5] * 784))),
        "expected [0, 1]",
    ),
    "pixels negative": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(pixels=pb.FloatPixels(values=[-0.1] * 784))),
        "expected [0, 1]",
    ),
    "undecodable image": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(encoded=b"not an image")),
        "image.encoded",
    ),
    "truncated png": ("Classify", pb.ClassifyRequest(image=pb.Image(encoded=png()[:60])), "image.encoded"),
    "truncated jpeg": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(encoded=truncated_jpeg())),
        "image.encoded",
    ),
    "gif header alone": ("Classify", pb.ClassifyRequest(image=pb.Image(encoded=b"GIF89a")), "image.encoded"),
    "NUL byte in model name": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(raw=ZERO), model_name="mn\x00ist"),
        "model_name",
    ),
    "10 kB model name": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(raw=ZERO), model_name="m" * 10_000),
        "model_name",
    ),
    "empty encoded": ("Classify", pb.ClassifyRequest(image=pb.Image(encoded=b"")), "image"),
    "decompression bomb": (  # built when its test runs, not at every worker's collection
        "Classify",
        lambda: pb.ClassifyRequest(image=pb.Image(encoded=bomb())),
        "image.encoded",
    ),
    "absurd dimensions": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(encoded=png((9000, 1)))),
        "at most 8192",
    ),
    "unknown model": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(raw=ZERO), model_name="resnet"),
        "model_name",
    ),
    "path-like model": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(raw=ZERO), model_name="../../etc/passwd"),
        "model_name",
    ),
    "unknown version": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(raw=ZERO), model_version="99"),
        "model_version",
    ),
    "non-numeric version": (
        "Classify",
        pb.ClassifyRequest(image=pb.Image(raw=ZERO), model_version="../1"),
        "model_version",
    ),
    "empty batch": ("ClassifyBatch", pb.ClassifyBatchRequest(), "empty batch"),
    "raw batch wrong bytes": (
        "ClassifyBatch",
        pb.ClassifyBatchRequest(raw=pb.RawBatch(data=bytes(784 * 2 + 1), count=2)),
        "raw.data",
    ),
    "raw batch count mismatch": (
        "ClassifyBatch",
        pb.ClassifyBatchRequest(raw=pb.RawBatch(data=bytes(784 * 2), count=3)),
        "raw.data",
    ),
    "raw and images both": (
        "ClassifyBatch",
        pb.ClassifyBatchRequest(raw=pb.RawBatch(data=ZERO, count=1), images=[pb.Image(raw=ZERO)]),
        "both set",
    ),
    "batch over the limit": (
        "ClassifyBatch",
        pb.ClassifyBatchRequest(raw=pb.RawBatch(data=b"", count=70000)),
        "at most",
    ),
}

V2_CASES = {
    "no inputs": (v2.ModelInferRequest(model_name="mnist"), "inputs"),
    "wrong input name": (infer(name="pixels", raw=[ZERO]), "inputs[0].name"),
    "two inputs": (infer(raw=[ZERO, ZERO], extra_inputs=1), "exactly one input"),
    "wrong dtype": (infer(datatype="INT32", raw=[bytes(784 * 4)]), "inputs[0].datatype"),
    "wrong shape": (infer(shape=(1, 28, 27), raw=[bytes(756)]), "inputs[0].shape"),
    "rank 4": (infer(shape=(1, 1, 28, 28), raw=[ZERO]), "inputs[0].shape"),
    "negative batch": (infer(shape=(-1, 28, 28), raw=[ZERO]), "negative"),
    "zero batch": (infer(shape=(0, 28, 28), raw=[b""]), "empty batch"),
    "raw byte count": (infer(shape=(2, 28, 28), raw=[ZERO]), "raw_input_contents[0]"),
    "fp32 byte count": (infer(datatype="FP32", shape=(1, 784), raw=[bytes(784)]), "raw_input_contents[0]"),
    "fp32 NaN": (infer(datatype="FP32", shape=(1, 784), raw=[np.full(784, np.nan, "<f4").tobytes()]), "NaN"),
    "fp32 out of range": (
        infer(datatype="FP32", shape=(1, 784), raw=[np.full(784, 255.0, "<f4").tobytes()]),
        "expected [0, 1]",
    ),
    "typed count": (infer(typed=("uint_contents", [0] * 10)), "uint_contents"),
    "typed above 255": (infer(typed=("uint_contents", [300] * 784)), "above 255"),
    "typed fp32 count": (infer(datatype="FP32", typed=("fp32_contents", [0.0] * 5)), "fp32_contents"),
    "raw and typed": (infer(raw=[ZERO], typed=("uint_contents", [0] * 784)), "contents"),
    "raw entries mismatch": (infer(raw=[ZERO, ZERO]), "raw_input_contents"),
    "unknown output": (infer(raw=[ZERO], outputs=("logits",)), "outputs[0].name"),
    "output repeated": (infer(raw=[ZERO], outputs=("label", "label")), "outputs[1].name"),
    "output repeated a thousand times": (infer(raw=[ZERO], outputs=("label",) * 1000), "more than once"),
    "unknown model": (infer(raw=[ZERO], model="mnist-cnn"), "model_name"),
    "unknown version": (infer(raw=[ZERO], version="7"), "model_version"),
    "over the limit": (infer(shape=(70000, 28, 28), raw=[b""]), "at most"),
    "path-like version": (infer(raw=[ZERO], version="../../etc/passwd"), "model_version"),
    "785 pixels": (infer(shape=(1, 785), raw=[bytes(785)]), "inputs[0].shape"),
    "overflowing shape": (infer(shape=(2**40, 28, 28), raw=[ZERO]), "at most"),
    "lowercase dtype": (infer(datatype="uint8", raw=[ZERO]), "inputs[0].datatype"),
    "bytes dtype": (infer(datatype="BYTES", raw=[ZERO]), "inputs[0].datatype"),
    "typed fp32 NaN": (infer(datatype="FP32", typed=("fp32_contents", [float("nan")] * 784)), "NaN"),
}


def _assert_healthy(channel):
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    response = pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(image=pb.Image(raw=ZERO)))
    assert 0 <= response.prediction.label <= 9


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def _expected_code(field: str) -> grpc.StatusCode:
    """An unknown model or version is NOT_FOUND (as KServe uses it); every other refusal here
    is INVALID_ARGUMENT."""
    return (
        grpc.StatusCode.NOT_FOUND
        if field in ("model_name", "model_version")
        else grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize("case", sorted(OWN_CASES))
def test_own_api_bad_input(channel, case):
    method, request, field = OWN_CASES[case]
    request = request() if callable(request) else request
    with pytest.raises(grpc.RpcError) as info:
        getattr(pb_grpc.ClassifierStub(channel), method)(request, timeout=30)
    assert info.value.code() == _expected_code(field), info.value.details()
    assert field in info.value.details()
    _assert_healthy(channel)


@pytest.mark.parametrize("case", sorted(V2_CASES))
def test_v2_bad_input(channel, case):
    request, field = V2_CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() == _expected_code(field), info.value.details()
    assert field in info.value.details()
    _assert_healthy(channel)


def test_bad_message_in_a_stream_ends_it_with_invalid_argument(channel):
    requests = [
        pb.ClassifyBatchRequest(raw=pb.RawBatch(data=ZERO, count=1)),
        pb.ClassifyBatchRequest(raw=pb.RawBatch(data=bytes(5), count=1)),
    ]
    call = pb_grpc.ClassifierStub(channel).ClassifyStream(iter(requests), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _assert_healthy(channel)


def test_message_over_the_size_limit(channel):
    huge = bytes(65536 * 784 * 4 + 2 * (1 << 20))
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.ClassifierStub(channel).ClassifyBatch(
            pb.ClassifyBatchRequest(raw=pb.RawBatch(data=huge)), timeout=60
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_healthy(channel)


def test_oversized_request_id_is_truncated_not_echoed_whole(channel):
    stub = pb_grpc.ClassifierStub(channel)
    _, call = stub.Classify.with_call(
        pb.ClassifyRequest(image=pb.Image(raw=ZERO)), metadata=(("x-request-id", "r" * 4000),)
    )
    echoed = dict(call.trailing_metadata())["x-request-id"]
    assert echoed == "r" * 128
    _assert_healthy(channel)


def test_oversized_metadata_is_refused_by_the_transport(channel):
    stub = pb_grpc.ClassifierStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(
            pb.ClassifyRequest(image=pb.Image(raw=ZERO)), metadata=(("x-junk", "j" * 100_000),), timeout=30
        )
    assert info.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
    )
    _assert_healthy(channel)


def test_a_bomb_inside_a_batch_costs_only_that_image(channel):
    request = pb.ClassifyBatchRequest(
        images=[pb.Image(raw=ZERO), pb.Image(encoded=bomb()), pb.Image(raw=ZERO)]
    )
    response = pb_grpc.ClassifierStub(channel).ClassifyBatch(request, timeout=30)
    assert [(e.index, e.code) for e in response.errors] == [(1, "INVALID_ARGUMENT")]
    assert response.errors[0].message.startswith("images[1].encoded")
    assert response.count == 3
    _assert_healthy(channel)


def test_a_long_model_name_is_not_echoed_whole(channel):
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.ClassifierStub(channel).Classify(
            pb.ClassifyRequest(image=pb.Image(raw=ZERO), model_name="m" * 10_000), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and len(info.value.details()) < 500
