"""MNIST-style preprocessing of encoded images, and real PNGs classified through the server."""

import io

import numpy as np
import pytest
from PIL import Image

from mnist_serving.client import Client
from mnist_serving.common.contract import NO_DIGIT_FOUND
from mnist_serving.server import preprocess
from mnist_serving.server.errors import InvalidInput


def _encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def dark_on_light(digit: np.ndarray, size: tuple[int, int], pad: int = 20) -> np.ndarray:
    """A digit drawn dark on white paper, at another size, off-centre, with a margin."""
    big = np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.BICUBIC))
    canvas = np.zeros((size[1] + 2 * pad, size[0] + 3 * pad), dtype=np.uint8)
    canvas[pad : pad + size[1], 2 * pad : 2 * pad + size[0]] = big
    return 255 - canvas


def test_mnist_digit_survives_preprocessing(mnist):
    digit = mnist.x_test[0]
    out = preprocess.decode_sized(_encode(digit))[0]
    assert out.shape == (28, 28) and out.dtype == np.uint8
    rows, cols = np.nonzero(out > 50)
    assert rows.max() - rows.min() <= 20 and cols.max() - cols.min() <= 20  # fits 20x20
    mass = out.astype(float)
    cy = (mass.sum(1) * np.arange(28)).sum() / mass.sum()
    cx = (mass.sum(0) * np.arange(28)).sum() / mass.sum()
    assert abs(cy - 14) < 1.0 and abs(cx - 14) < 1.0


@pytest.mark.parametrize(
    "fmt, mode",
    [
        ("PNG", None),
        ("JPEG", None),
        ("BMP", None),
        ("GIF", None),
        ("TIFF", None),
        ("WEBP", None),
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
    ],
)
def test_every_format_decodes_the_same_digit(mnist, fmt, mode):
    reference = preprocess.decode_sized(_encode(dark_on_light(mnist.x_test[3], (90, 90))))[0]
    out = preprocess.decode_sized(_encode(dark_on_light(mnist.x_test[3], (90, 90)), fmt, mode))[0]
    assert np.abs(out.astype(int) - reference.astype(int)).mean() < 8  # lossy formats differ a little


def test_light_background_is_inverted(mnist):
    light = preprocess.decode_sized(_encode(255 - mnist.x_test[0]))[0]
    dark = preprocess.decode_sized(_encode(mnist.x_test[0]))[0]
    # dark (MNIST's own format) passes through; light goes through the pipeline and comes close
    assert np.array_equal(dark, mnist.x_test[0])
    assert np.abs(light.astype(int) - dark.astype(int)).mean() < 5
    assert np.corrcoef(light.ravel(), dark.ravel())[0, 1] > 0.97


def test_blank_image_is_invalid_input_saying_no_digit_found():
    with pytest.raises(InvalidInput, match=f"image.encoded: {NO_DIGIT_FOUND}"):
        preprocess.decode_sized(_encode(np.full((50, 50), 255, np.uint8)))


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n garbage", b"GIF89a"])
def test_garbage_is_invalid_input(data):
    with pytest.raises(InvalidInput, match="image.encoded"):
        preprocess.decode_sized(data)[0]


def test_dark_on_light_pngs_at_other_sizes_are_classified(server, mnist, onnx_reference):
    """Digits the model gets right in raw form are still right when drawn as PNGs on paper."""
    labels = onnx_reference[1]
    chosen = [i for i in range(200) if labels[i] == mnist.y_test[i]][:100]
    sizes = [(56, 56), (100, 140), (200, 120), (33, 47)]
    pngs = [_encode(dark_on_light(mnist.x_test[i], sizes[k % len(sizes)])) for k, i in enumerate(chosen)]
    with Client(server.address) as client:
        result = client.classify_batch(pngs, batch_size=64)
        single = client.classify(pngs[0])
    agree = (result.labels == mnist.y_test[chosen]).mean()
    assert agree >= 0.95, agree
    assert single.label == mnist.y_test[chosen[0]]
