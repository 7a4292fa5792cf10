"""Each preprocessing step on a small synthetic image that shows why the step exists.

The reference is the same digit on clean white paper; a step works when the hard image comes
out like the reference (pixel correlation), where the version-1 pipeline did not.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mnist_serving.common import preprocess
from mnist_serving.common.contract import NO_DIGIT_FOUND
from tests.helpers import encode


def page(
    digit: np.ndarray,
    frame: tuple[int, int] = (160, 160),
    height: int = 80,
    at: tuple[int, int] = (20, 20),
    paper: float = 255.0,
    ink: float = 0.0,
    gradient: float = 0.0,
    noise: float = 0.0,
    seed: int = 0,
) -> Image.Image:
    """A MNIST digit drawn ``height`` px tall at ``at`` on paper, optionally lit unevenly."""
    size = round(28 * height / 20)
    coverage = np.zeros(frame[::-1], np.float32)
    glyph = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    coverage[at[1] : at[1] + size, at[0] : at[0] + size] = glyph / 255.0
    ramp = np.linspace(-gradient, gradient, frame[0], dtype=np.float32)[None, :]
    pixels = paper * (1 - coverage) + ink * coverage + ramp
    pixels += np.random.default_rng(seed).normal(0, noise, pixels.shape) if noise else 0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


@pytest.fixture(scope="module")
def seven(mnist) -> np.ndarray:
    return mnist.x_test[0]  # a 7: neither symmetric nor rotation-invariant


@pytest.fixture(scope="module")
def reference(seven) -> np.ndarray:
    return preprocess.decode(encode(page(seven)))[0]


def test_exif_orientation_turns_a_sideways_photo_upright(seven, reference):
    upright = page(seven).convert("RGB")
    for tag, stored in ((6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)):
        exif = Image.Exif()
        exif[0x0112] = tag
        tagged = encode(upright.transpose(stored), "JPEG", quality=90, exif=exif.tobytes())
        untagged = encode(upright.transpose(stored), "JPEG", quality=90)
        assert correlation(preprocess.decode(tagged)[0], reference) > 0.9
        assert correlation(preprocess.decode(untagged)[0], reference) < 0.5  # what ignoring it gave


def test_transparency_is_composited_onto_white(seven, reference):
    alpha = page(seven)  # dark ink where the digit is
    rgba = Image.new("RGBA", alpha.size, (0, 0, 0, 0))
    rgba.putalpha(Image.eval(alpha, lambda v: 255 - v))  # black ink, transparent paper
    assert correlation(preprocess.decode(encode(rgba))[0], reference) > 0.95


def test_uneven_light_on_tinted_paper_is_flattened(seven, reference):
    lit = page(seven, paper=215, ink=40, gradient=40, noise=4).convert("RGB")
    tinted = Image.merge(
        "RGB", [band.point(lambda v, k=k: v + k) for k, band in zip((8, 0, -12), lit.split(), strict=True)]
    )
    out = preprocess.decode(encode(tinted, "JPEG", quality=70))[0]
    assert correlation(out, reference) > 0.8  # version 1: 0.32, its crop covered the paper


def test_jpeg_haze_around_printed_digits_stays_paper(seven, reference):
    hazy = preprocess.decode(encode(page(seven, paper=235, ink=30), "JPEG", quality=40))[0]
    assert correlation(hazy, reference) > 0.8
    outside = reference == 0
    assert (hazy[outside] > 0).mean() < 0.12  # version 1 lit a quarter of the clean background


def test_small_digit_in_a_big_noisy_frame_is_found_and_framed(seven, reference):
    photo = page(seven, frame=(480, 360), height=70, at=(330, 40), paper=225, ink=35, noise=6)
    out = preprocess.decode(encode(photo.convert("RGB"), "JPEG", quality=60))[0]
    assert correlation(out, reference) > 0.9


def test_specks_away_from_the_digit_are_ignored(seven, reference):
    speckled = np.asarray(page(seven, frame=(240, 160)), np.uint8).copy()
    for y, x in ((5, 5), (150, 230), (10, 200), (140, 150)):
        speckled[y : y + 3, x : x + 3] = 0
    assert correlation(preprocess.decode(encode(Image.fromarray(speckled)))[0], reference) > 0.95


def test_light_ink_on_dark_paper_reads_like_dark_on_light(seven, reference):
    inverted = page(seven, paper=30, ink=230)
    assert correlation(preprocess.decode(encode(inverted))[0], reference) > 0.95


def test_output_is_mnist_style(seven):
    out = preprocess.decode(encode(page(seven, frame=(300, 200), height=120, at=(60, 10))))[0]
    rows, cols = np.nonzero(out)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert rows.max() - rows.min() < 21 and cols.max() - cols.min() < 21  # fits 20×20
    mass = out.astype(float) / out.sum()
    cy, cx = (mass.sum(1) * np.arange(28)).sum(), (mass.sum(0) * np.arange(28)).sum()
    assert abs(cy - 14) < 1 and abs(cx - 14) < 1  # centred by mass


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (200, 150), 255),
        Image.new("L", (28, 28), 0),
        Image.fromarray(  # paper with lighting and sensor noise, no ink
            np.clip(
                230 + np.linspace(-40, 40, 320)[None, :] + np.random.default_rng(1).normal(0, 8, (240, 320)),
                0,
                255,
            ).astype(np.uint8)
        ),
        Image.fromarray(np.pad(np.zeros((2, 2), np.uint8), ((100, 98), (150, 148)), constant_values=240)),
    ],
    ids=["white", "black", "lit-noisy-paper", "one-speck"],
)
def test_blank_or_nearly_blank_is_no_digit_found(image):
    with pytest.raises(preprocess.NoDigitFound, match=NO_DIGIT_FOUND):
        preprocess.decode(encode(image))


def test_big_jpegs_decode_at_reduced_size(seven):
    photo = page(seven, frame=(3000, 2000), height=900, at=(1000, 500), paper=230, ink=30)
    data = encode(photo.convert("RGB"), "JPEG", quality=80)
    gray, _ = preprocess.load_gray(data)
    assert min(gray.shape) < 2 * preprocess.WORK_SIDE  # decoded reduced, straight from the DCT
    digit, pixels = preprocess.decode(data)
    assert pixels == 3000 * 2000  # the pixel budget still counts the image as sent
    assert correlation(digit, preprocess.decode(encode(page(seven)))[0]) > 0.9


def test_an_image_already_in_mnist_format_passes_through_unchanged(mnist):
    digit = mnist.x_test[7]
    assert np.array_equal(preprocess.decode(encode(Image.fromarray(digit)))[0], digit)
    inverted = preprocess.decode(encode(Image.fromarray(255 - digit)))[0]  # dark on light: the pipeline
    assert not np.array_equal(inverted, digit) and correlation(inverted, digit) > 0.9


@pytest.mark.parametrize("size", [(320, 240), (250, 170), (240, 320)])  # 250×170: whole blocks only
def test_big_images_are_reduced_by_whole_blocks_without_shifting(size):
    """A 320×240 print is reduced by 3: each output pixel is one 3×3 block of the file, the
    part blocks at the far edges included, so nothing drifts towards the right or bottom."""
    factor = min(size) // preprocess.WORK_SIDE
    rows, cols = -(-size[1] // factor), -(-size[0] // factor)
    levels = np.random.default_rng(1).integers(0, 256, (rows, cols), dtype=np.uint8)
    blocks = np.repeat(np.repeat(levels, factor, axis=0), factor, axis=1)[: size[1], : size[0]]
    gray, _ = preprocess.load_gray(encode(Image.fromarray(blocks)))
    assert gray.shape == levels.shape
    assert np.array_equal(gray, levels.astype(np.float32))


def test_a_broken_file_is_an_error_without_noise_on_stderr():
    """``mnist-classify`` reports a truncated file in its row; OpenCV's own warning about the
    same file would only clutter the terminal (a fresh process: the setting is read at import)."""
    code = (
        "import io; from PIL import Image; from mnist_serving.common import preprocess\n"
        "buffer = io.BytesIO(); Image.new('L', (100, 100), 255).save(buffer, 'PNG')\n"
        "try:\n    preprocess.decode(buffer.getvalue()[:60])\n"
        "except preprocess.ImageError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "cannot decode image (not a valid PNG file)"
    assert done.stderr == ""
