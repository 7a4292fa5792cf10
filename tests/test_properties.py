"""Property-based tests: request validation and image decoding never crash, never lie."""

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2 as v2
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.server import codec, preprocess
from mnist_serving.server.errors import InvalidInput

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dims = st.lists(st.integers(min_value=-3, max_value=800), min_size=0, max_size=5)
datatypes = st.sampled_from(["UINT8", "FP32", "INT64", "BYTES", "", "uint8", "FP16"])


@FAST
@given(
    shape=dims,
    datatype=datatypes,
    raw=st.binary(max_size=5000),
    name=st.sampled_from(["image", "x", ""]),
    outputs=st.lists(st.sampled_from(["label", "probabilities", "logits"]), max_size=3),
)
def test_v2_requests_decode_or_are_refused_cleanly(shape, datatype, raw, name, outputs):
    request = v2.ModelInferRequest(model_name="mnist", raw_input_contents=[raw])
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    for output in outputs:
        request.outputs.add(name=output)
    try:
        images, use_raw, requested = codec.decode_infer_request(request, max_images=1000)
    except InvalidInput as exc:
        assert str(exc)  # a message naming the field
        return
    # Accepted: then it really is what the contract says.
    assert use_raw and images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    assert images.shape[0] == shape[0] >= 1 and name == "image"
    assert set(requested) <= {"label", "probabilities"}
    if datatype == "UINT8":
        assert images.tobytes() == raw


@FAST
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=800))
def test_float_pixels_are_range_checked(values):
    image = pb.Image(pixels=pb.FloatPixels(values=values))
    try:
        out = codec.decode_image(image)
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
        out = preprocess.decode(data)
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
def test_any_real_image_becomes_a_28x28_digit(width, height, seed, fmt, mode):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).convert(mode)
    if fmt == "JPEG" and mode in ("RGBA", "P", "1"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    out = preprocess.decode(buffer.getvalue())
    assert out.shape == (28, 28) and out.dtype == np.uint8


@FAST
@given(data=st.binary(max_size=4000), count=st.integers(0, 10))
def test_raw_batches_decode_or_are_refused_cleanly(data, count):
    request = pb.ClassifyBatchRequest(raw=pb.RawBatch(data=data, count=count))
    try:
        images = codec.decode_batch(request, max_images=1000)
    except InvalidInput:
        return
    assert images.shape[1:] == (28, 28) and images.tobytes() == data
