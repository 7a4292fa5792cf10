"""Property-based tests: request validation and image decoding never crash, never lie."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_serving.common.contract import IMAGE_PIXELS, IMAGE_SHAPE, NO_DIGIT_FOUND
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.server import preprocess
from mnist_serving.server.codec import batch_items, image_item, v2_request
from mnist_serving.server.errors import InvalidInput
from tests.helpers import encode

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dims = st.lists(st.integers(min_value=-3, max_value=800), min_size=0, max_size=5)
datatypes = st.sampled_from(["UINT8", "FP32", "INT64", "BYTES", "", "uint8", "FP16"])


@FAST
@given(
    shape=dims,
    datatype=datatypes,
    raw=st.binary(max_size=5000),
    typed=st.none() | st.lists(st.integers(0, 300), max_size=2000),
    name=st.sampled_from(["image", "x", ""]),
    outputs=st.lists(st.sampled_from(["label", "probabilities", "logits"]), max_size=3),
)
def test_v2_requests_decode_or_are_refused_cleanly(shape, datatype, raw, typed, name, outputs):
    """Raw bytes or typed contents: decoded exactly as the contract says, or refused by field."""
    request = v2.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if typed is None:
        request.raw_input_contents.append(raw)
    elif datatype == "FP32":
        tensor.contents.fp32_contents.extend(v / 300 for v in typed)
    else:
        tensor.contents.uint_contents.extend(typed)
    for output in outputs:
        request.outputs.add(name=output)
    try:
        images, use_raw, requested = v2_request(request, max_images=1000)
    except InvalidInput as exc:
        assert str(exc).startswith(("inputs", "raw_input_contents", "outputs")), str(exc)
        return
    # Accepted: then it really is what the contract says.
    assert images.dtype == np.uint8 and images.shape[1:] == IMAGE_SHAPE
    assert images.shape[0] == shape[0] >= 1 and name == "image" and datatype in ("UINT8", "FP32")
    assert set(requested) <= {"label", "probabilities"} and use_raw == (typed is None)
    if typed is None and datatype == "UINT8":
        assert images.tobytes() == raw
    if typed is not None and datatype == "UINT8":
        assert images.ravel().tolist() == typed
    if typed is not None and datatype == "FP32":
        expected = np.rint(np.asarray([v / 300 for v in typed], np.float32) * 255).astype(np.uint8)
        assert np.array_equal(images.ravel(), expected)


@FAST
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=800))
def test_float_pixels_are_range_checked(values):
    image = pb.Image(pixels=pb.FloatPixels(values=values))
    try:
        out = image_item(image, "image")
    except InvalidInput:
        array = np.asarray(values, dtype=np.float32)
        assert len(values) != 784 or not np.isfinite(array).all() or array.min() < 0 or array.max() > 1
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert np.array_equal(out.ravel(), np.rint(np.asarray(values, np.float32) * 255).astype(np.uint8))


@FAST
@given(data=st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash_the_decoder(data):
    try:
        out = preprocess.decode_sized(data)[0]
    except InvalidInput as exc:
        assert "image.encoded" in str(exc)
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    fmt=st.sampled_from(["PNG", "BMP", "GIF", "TIFF", "WEBP", "JPEG"]),
    mode=st.sampled_from(["L", "RGB", "RGBA", "1", "P"]),
)
def test_any_real_image_becomes_a_28x28_digit_or_no_digit_found(width, height, seed, fmt, mode):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).convert(mode)
    if fmt == "JPEG" and mode in ("RGBA", "P", "1"):
        image = image.convert("RGB")
    try:
        out = preprocess.decode_sized(encode(image, fmt))[0]
    except InvalidInput as exc:  # random noise often holds no digit: said so, never a crash
        assert f"image.encoded: {NO_DIGIT_FOUND}" in str(exc)
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8


@FAST
@given(data=st.binary(max_size=4000), count=st.integers(0, 10))
def test_raw_batches_decode_or_are_refused_cleanly(data, count):
    request = pb.ClassifyBatchRequest(raw=pb.RawBatch(data=data, count=count))
    effective = count or (len(data) // IMAGE_PIXELS if len(data) % IMAGE_PIXELS == 0 else 0)
    valid = 1 <= effective <= 1000 and len(data) == effective * IMAGE_PIXELS
    try:
        images = batch_items(request, max_images=1000)
    except InvalidInput as exc:
        assert not valid and str(exc).startswith("raw"), (len(data), count, str(exc))
        return
    assert valid and images.shape == (effective, *IMAGE_SHAPE) and images.tobytes() == data
