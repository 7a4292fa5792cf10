"""The server's side of preprocessing: images decoded to digits, failures named by field."""

import numpy as np
import pytest

from mnist_serving.common.contract import NO_DIGIT_FOUND
from mnist_serving.server import preprocess
from mnist_serving.server.errors import InvalidInput
from tests.helpers import dark_on_light, encode


def test_mnist_digit_survives_preprocessing(mnist):
    digit = mnist.x_test[0]
    out = preprocess.decode_sized(encode(digit))[0]
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
    reference = preprocess.decode_sized(encode(dark_on_light(mnist.x_test[3], (90, 90))))[0]
    out = preprocess.decode_sized(encode(dark_on_light(mnist.x_test[3], (90, 90)), fmt, mode))[0]
    assert np.abs(out.astype(int) - reference.astype(int)).mean() < 8  # lossy formats differ a little


def test_light_background_is_inverted(mnist):
    light = preprocess.decode_sized(encode(255 - mnist.x_test[0]))[0]
    dark = preprocess.decode_sized(encode(mnist.x_test[0]))[0]
    # dark (MNIST's own format) passes through; light goes through the pipeline and comes close
    assert np.array_equal(dark, mnist.x_test[0])
    assert np.abs(light.astype(int) - dark.astype(int)).mean() < 5
    assert np.corrcoef(light.ravel(), dark.ravel())[0, 1] > 0.97


def test_blank_image_is_invalid_input_saying_no_digit_found():
    with pytest.raises(InvalidInput, match=f"image.encoded: {NO_DIGIT_FOUND}"):
        preprocess.decode_sized(encode(np.full((50, 50), 255, np.uint8)))


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n garbage", b"GIF89a"])
def test_garbage_is_invalid_input(data):
    with pytest.raises(InvalidInput, match="image.encoded"):
        preprocess.decode_sized(data)[0]
