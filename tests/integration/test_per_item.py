"""Per-item results: one bad image in a batch or stream costs that image, not the request."""

import asyncio
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from mnist_serving.client import Client
from mnist_serving.common.contract import NO_DIGIT_FOUND, NO_LABEL
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.helpers import encode


def _jpeg(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels).resize((200, 200)), "JPEG", quality=90)


def _mixed_batch(mnist) -> tuple[list[pb.Image], dict[int, str]]:
    """Good images (raw, PNG, JPEG, float pixels) among bad ones; the bad ones' fields."""
    x = mnist.x_test
    images = [
        pb.Image(raw=x[0].tobytes()),
        pb.Image(encoded=b"\x89PNG\r\n\x1a\n not really a png"),
        pb.Image(encoded=encode(x[1])),
        pb.Image(encoded=_jpeg(x[2])[:300]),  # truncated JPEG
        pb.Image(raw=bytes(3)),
        pb.Image(encoded=_jpeg(x[3])),
        pb.Image(pixels=pb.FloatPixels(values=[2.0] * 784)),
        pb.Image(pixels=pb.FloatPixels(values=(x[4].ravel() / 255).tolist())),
        pb.Image(encoded=b""),
    ]
    bad = {
        1: "images[1].encoded",
        3: "images[3].encoded",
        4: "images[4].raw",
        6: "images[6].pixels",
        8: "images[8].encoded",
    }
    return images, bad


def _alone(stub, image: pb.Image) -> int:
    return stub.Classify(pb.ClassifyRequest(image=image), timeout=30).prediction.label


def test_batch_answers_every_good_image_and_names_each_bad_one(server, mnist):
    images, bad = _mixed_batch(mnist)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        response = stub.ClassifyBatch(pb.ClassifyBatchRequest(images=images), timeout=30)
        labels = np.frombuffer(response.labels, np.uint8)
        confidences = np.frombuffer(response.confidences, "<f4")
        assert response.count == len(images) == len(labels)
        assert {e.index: e.code for e in response.errors} == dict.fromkeys(bad, "INVALID_ARGUMENT")
        for error in response.errors:
            assert error.message.startswith(bad[error.index]), error.message
        for i, image in enumerate(images):
            if i in bad:
                assert labels[i] == NO_LABEL and confidences[i] == 0
            else:  # the same answer as the image on its own
                assert labels[i] == _alone(stub, image) and confidences[i] > 0


def test_stream_messages_answer_per_item_too(server, mnist):
    images, bad = _mixed_batch(mnist)
    requests = [pb.ClassifyBatchRequest(images=images), pb.ClassifyBatchRequest(images=images[:3])]
    with grpc.insecure_channel(server.address) as channel:
        responses = list(pb_grpc.ClassifierStub(channel).ClassifyStream(iter(requests), timeout=60))
    assert [r.count for r in responses] == [len(images), 3]
    assert [e.index for e in responses[0].errors] == sorted(bad)
    assert [e.index for e in responses[1].errors] == [1]


def test_a_batch_of_only_bad_images_still_answers(server):
    request = pb.ClassifyBatchRequest(images=[pb.Image(encoded=b"junk"), pb.Image(raw=b"x")])
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.ClassifierStub(channel).ClassifyBatch(request, timeout=30)
    assert [e.index for e in response.errors] == [0, 1]
    assert np.frombuffer(response.labels, np.uint8).tolist() == [NO_LABEL, NO_LABEL]


def test_client_library_exposes_per_item_errors(server, mnist):
    images = [mnist.x_test[0], b"not an image", mnist.x_test[1]]
    with Client(server.address) as client:
        result = client.classify_batch(images)
        alone = [client.classify(mnist.x_test[i]).label for i in (0, 1)]
    assert list(result.errors) == [1] and "images[1].encoded" in result.errors[1]
    assert result.errors[1].startswith("INVALID_ARGUMENT")
    assert result.labels.tolist() == [alone[0], -1, alone[1]]


def test_unknown_model_and_version_are_not_found(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for request in (
            pb.ClassifyRequest(image=pb.Image(raw=bytes(784)), model_name="resnet"),
            pb.ClassifyRequest(image=pb.Image(raw=bytes(784)), model_version="99"),
        ):
            try:
                stub.Classify(request, timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
            else:
                raise AssertionError("an unknown model was served")


def test_a_call_the_caller_cancels_is_counted_cancelled(server, mnist):
    """Not OK: the server records what really happened to the call."""

    def cancelled() -> float:
        return server.metric("mnist_serving_requests_total", method="ClassifyBatch", code="CANCELLED")

    before = cancelled()
    images = np.tile(mnist.x_test, (6, 1, 1))  # 60,000 images: long enough to cancel mid-way
    request = pb.ClassifyBatchRequest(raw=pb.RawBatch(data=images.tobytes(), count=len(images)))

    async def go():
        options = [("grpc.max_send_message_length", 256 << 20)]
        async with grpc.aio.insecure_channel(server.address, options=options) as channel:
            call = pb_grpc.ClassifierStub(channel).ClassifyBatch(request, timeout=120)
            while server.metric("mnist_serving_inflight_requests") < 1:  # the server has it
                await asyncio.sleep(0.005)  # polling the server's own gauge
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(go())
    deadline = time.monotonic() + 30
    while cancelled() < before + 1:  # scraping the server's own counter
        assert time.monotonic() < deadline, "the cancelled call was never counted"


def test_a_blank_image_is_no_digit_found_alone_and_in_a_batch(server, mnist):
    blank = encode(np.full((120, 160), 238, np.uint8))
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        with pytest.raises(grpc.RpcError) as alone:
            stub.Classify(pb.ClassifyRequest(image=pb.Image(encoded=blank)), timeout=30)
        assert alone.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert alone.value.details().startswith(f"image.encoded: {NO_DIGIT_FOUND}")
        images = [pb.Image(encoded=encode(255 - mnist.x_test[0])), pb.Image(encoded=blank)]
        response = stub.ClassifyBatch(pb.ClassifyBatchRequest(images=images), timeout=30)
    assert [(e.index, e.code) for e in response.errors] == [(1, "INVALID_ARGUMENT")]
    assert NO_DIGIT_FOUND in response.errors[0].message
    assert response.labels[0] == mnist.y_test[0] and response.labels[1] == NO_LABEL


DATA = __import__("pathlib").Path(__file__).parents[1] / "data"


def _dds() -> bytes:
    """A DirectDraw Surface header (a format Pillow can open, this service does not take)."""
    import struct

    header = struct.pack("<4sIIIIIII44s", b"DDS ", 124, 0x1007, 28, 28, 0, 0, 0, b"\0" * 44)
    pixel_format = struct.pack("<II4s20s", 32, 0x4, b"ATI9", b"\0" * 20)  # an unknown FourCC
    return header + pixel_format + b"\0" * 20 + b"\0" * 784


def test_hostile_encodings_are_per_item_errors_over_grpc_rest_and_the_cli(server, mnist, tmp_path):
    """A DDS named .png and a TIFF whose tags make Pillow raise TypeError: each is its own
    INVALID_ARGUMENT (400 over REST, an error row in the CLI), never INTERNAL, 500 or a traceback."""
    import subprocess
    import urllib.error
    import urllib.request

    from tests.batch_cli import EXE

    hostile = {"dds.png": _dds(), "mutated.tiff": (DATA / "mutated.tiff").read_bytes()}
    good = encode(255 - mnist.x_test[0])
    images = [pb.Image(encoded=good)] + [pb.Image(encoded=b) for b in hostile.values()]
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.ClassifierStub(channel).ClassifyBatch(
            pb.ClassifyBatchRequest(images=images), timeout=60
        )
    assert {e.index: e.code for e in response.errors} == {1: "INVALID_ARGUMENT", 2: "INVALID_ARGUMENT"}
    assert "not a recognised image format" in response.errors[0].message
    assert response.labels[0] == int(mnist.y_test[0])
    for blob in hostile.values():
        request = urllib.request.Request(f"{server.http_url}/v1/classify", data=blob, method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert info.value.code == 400
    for name, blob in hostile.items():
        (tmp_path / name).write_bytes(blob)
    (tmp_path / "good.png").write_bytes(good)
    done = subprocess.run(
        [EXE, "--no-progress", str(tmp_path), "--server", server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.count("cannot decode image") == 2
    assert server.metric("mnist_serving_requests_total", code="INTERNAL") == 0
