"""The field test set: digits as people send them (photos, prints, pens, scans), generated.

    python bench/field/generate.py [--out bench/field/data] [--seed 0] [--update-hash]

Deterministic from the seed (numpy's PCG64, Pillow's encoders, the Debian font files named
below); the SHA-256 of the whole set is pinned in ``expected.sha256`` and checked after every
run, so a figure always refers to the same files. The ranges were fixed before any tuning of
the preprocessing and are not to be narrowed:

- photos: MNIST test digits on paper, digit 20-60% of the frame height, anywhere in the
  frame, rotated up to ±12°; paper 200-245 with a colour tint, a lighting gradient of up to
  ±40 levels across the frame; blue or black ink; Gaussian noise up to σ 8; JPEG quality
  40-90; a quarter stored sideways with EXIF orientation 6 or 8;
- printed: digits in fonts from Debian packages (fonts-dejavu-core, fonts-liberation,
  fonts-freefont-ttf, fonts-urw-base35), the same renders as PNG and as JPEG, dark on light
  and light on dark; "tuning" fonts were looked at while tuning, "held-out" fonts never were;
- strokes: MNIST test digits redrawn with a thick marker and with a thin pen;
- scans: MNIST test digits 6-10 mm tall scanned at 300 dpi (PNG and JPEG).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mnist_serving.common.mnist_data import load_mnist

HERE = Path(__file__).resolve().parent
FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/share/fonts/opentype")
TUNING_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "LiberationSans-Regular.ttf", "DejaVuSans-Bold.ttf")
HELD_OUT_FONTS = (
    "LiberationSerif-Regular.ttf",
    "LiberationMono-Regular.ttf",
    "FreeSans.ttf",
    "FreeSerif.ttf",
    "FreeMono.ttf",
    "NimbusSans-Bold.otf",
    "URWGothic-Book.otf",
    "C059-Roman.otf",
)
FONT_PACKAGES = "fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35"
COUNTS = {"photo": 2000, "printed": 500, "stroke": 500, "scan": 500}


def find_font(name: str) -> Path:
    for directory in FONT_DIRS:
        found = sorted(Path(directory).rglob(name))
        if found:
            return found[0]
    raise SystemExit(f"font {name} not found; install the Debian packages: apt-get install {FONT_PACKAGES}")


def _jpeg(image: Image.Image, quality: int, orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _ink_alpha(digit: np.ndarray, height_px: float, angle: float) -> Image.Image:
    """A 28×28 MNIST digit as an ink-coverage image whose ink is ``height_px`` tall."""
    rows = np.nonzero(digit.max(1))[0]
    ink_rows = max(1, rows.max() - rows.min() + 1)
    scale = height_px / ink_rows
    size = max(8, round(28 * scale))
    alpha = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    return alpha.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)


def _place(frame: tuple[int, int], alpha: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Coverage in [0,1] over the frame, the digit anywhere it fits."""
    width, height = frame
    canvas = Image.new("L", frame, 0)
    x = int(rng.integers(0, max(1, width - alpha.width)))
    y = int(rng.integers(0, max(1, height - alpha.height)))
    canvas.paste(alpha, (x, y))
    return np.asarray(canvas, np.float32) / 255.0


def photo(digit: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    width, height = 480, 360
    fraction = rng.uniform(0.2, 0.6)
    angle = rng.uniform(-12, 12)
    coverage = _place((width, height), _ink_alpha(digit, fraction * height, angle), rng)[..., None]
    paper = rng.uniform(200, 245) + rng.uniform(-12, 12, 3)
    ink = (
        rng.uniform(15, 55, 1).repeat(3)
        if rng.random() < 0.5
        else np.array([rng.uniform(20, 50), rng.uniform(30, 70), rng.uniform(110, 170)])
    )
    theta = rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(0, 40)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = ((xs - width / 2) * np.cos(theta) + (ys - height / 2) * np.sin(theta)) / (
        0.5 * np.hypot(width, height)
    )
    light = amplitude * ramp[..., None]
    sigma = rng.uniform(0, 8)
    pixels = paper * (1 - coverage) + ink * coverage + light + rng.normal(0, sigma, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image, {"quality": int(rng.integers(40, 91)), "fraction": round(fraction, 3)}


def printed(char: str, font_path: Path, dark_on_light: bool, rng: np.random.Generator) -> Image.Image:
    width, height = 320, 240
    fraction = rng.uniform(0.25, 0.6)
    font = ImageFont.truetype(str(font_path), size=max(8, round(fraction * height * 1.35)))
    left, top, right, bottom = font.getbbox(char)
    glyph = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(glyph).text((4 - left, 4 - top), char, fill=255, font=font)
    glyph = glyph.rotate(rng.uniform(-5, 5), resample=Image.Resampling.BILINEAR, expand=True)
    coverage = _place((width, height), glyph, rng)
    paper, ink = (rng.uniform(215, 255), rng.uniform(0, 60))
    if not dark_on_light:
        paper, ink = rng.uniform(0, 60), rng.uniform(200, 255)
    pixels = paper * (1 - coverage) + ink * coverage + rng.normal(0, rng.uniform(0, 4), coverage.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def stroke(digit: np.ndarray, thick: bool, rng: np.random.Generator) -> Image.Image:
    big = Image.fromarray(digit).resize((112, 112), Image.Resampling.BICUBIC)
    big = big.filter(ImageFilter.MaxFilter(9) if thick else ImageFilter.MinFilter(5))
    alpha = np.asarray(big, np.float32)
    if not alpha.any():
        alpha = np.asarray(Image.fromarray(digit).resize((112, 112)), np.float32)
    alpha_image = Image.fromarray(alpha.astype(np.uint8)).rotate(rng.uniform(-8, 8), expand=True)
    side = 300
    rows = np.nonzero(alpha.max(1))[0]
    scale = rng.uniform(0.3, 0.5) * side / max(1, rows.max() - rows.min() + 1)
    alpha_image = alpha_image.resize(
        (max(8, round(alpha_image.width * scale)), max(8, round(alpha_image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    coverage = _place((side, side), alpha_image, rng)
    paper, ink = rng.uniform(225, 250), rng.uniform(10, 60)
    pixels = paper * (1 - coverage) + ink * coverage + rng.normal(0, rng.uniform(0, 4), coverage.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def scan(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    side = 600  # 2 inches at 300 dpi
    height_px = rng.uniform(6, 10) / 25.4 * 300
    coverage = _place((side, side), _ink_alpha(digit, height_px, rng.uniform(-6, 6)), rng)
    paper, ink = rng.uniform(230, 252), rng.uniform(20, 70)
    pixels = paper * (1 - coverage) + ink * coverage + rng.normal(0, rng.uniform(1, 4), coverage.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))


def generate(out: Path, seed: int) -> list[dict]:
    """Write every file and return the manifest rows (path, condition, label, ...)."""
    rng = np.random.default_rng(seed)
    mnist = load_mnist()
    rows: list[dict] = []

    def write(name: str, data: bytes, **fields: object) -> None:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append({"path": name, **fields})

    picks = rng.choice(len(mnist.x_test), COUNTS["photo"], replace=False)
    for n, index in enumerate(picks):
        image, info = photo(mnist.x_test[index], rng)
        label = int(mnist.y_test[index])
        if n % 4 == 3:  # stored sideways, as phones do; the tag says how to turn it upright
            orientation = 6 if rng.random() < 0.5 else 8
            stored = image.transpose(
                Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270
            )
            write(
                f"photo-exif/{n:05d}.jpg",
                _jpeg(stored, info["quality"], orientation),
                condition="photo, EXIF-rotated",
                label=label,
                source=f"mnist-test-{index}",
            )
        else:
            write(
                f"photo/{n:05d}.jpg",
                _jpeg(image, info["quality"]),
                condition="photo, upright",
                label=label,
                source=f"mnist-test-{index}",
            )
    for group, fonts in (("tuning", TUNING_FONTS), ("held-out", HELD_OUT_FONTS)):
        paths = [find_font(f) for f in fonts]
        for n in range(COUNTS["printed"]):
            char = str(n % 10)
            font = paths[int(rng.integers(len(paths)))]
            dark = bool(rng.random() < 0.5)
            image = printed(char, font, dark, rng)
            quality = int(rng.integers(40, 91))
            polarity = "dark on light" if dark else "light on dark"
            for fmt, data in (("PNG", _png(image)), ("JPEG", _jpeg(image, quality))):
                write(
                    f"printed-{group}-{fmt.lower()}/{n:05d}.{'png' if fmt == 'PNG' else 'jpg'}",
                    data,
                    condition=f"printed, {group} fonts, {fmt}",
                    label=int(char),
                    source=font.name,
                    polarity=polarity,
                )
    picks = rng.choice(len(mnist.x_test), 2 * COUNTS["stroke"], replace=False)
    for n, index in enumerate(picks):
        thick = n % 2 == 0
        image = stroke(mnist.x_test[index], thick, rng)
        write(
            f"stroke-{'marker' if thick else 'pen'}/{n:05d}.png",
            _png(image),
            condition=f"strokes, {'thick marker' if thick else 'thin pen'}",
            label=int(mnist.y_test[index]),
            source=f"mnist-test-{index}",
        )
    picks = rng.choice(len(mnist.x_test), COUNTS["scan"], replace=False)
    for n, index in enumerate(picks):
        image = scan(mnist.x_test[index], rng)
        data = _png(image) if n % 2 == 0 else _jpeg(image, int(rng.integers(80, 96)))
        write(
            f"scan/{n:05d}.{'png' if n % 2 == 0 else 'jpg'}",
            data,
            condition="scans, 300 dpi",
            label=int(mnist.y_test[index]),
            source=f"mnist-test-{index}",
        )
    return rows


def digest(out: Path, rows: list[dict]) -> str:
    """SHA-256 over the manifest and every file, in manifest order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(sorted(row.items())).encode())
        h.update((out / row["path"]).read_bytes())
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--update-hash", action="store_true", help="pin this run's hash (after a deliberate change)"
    )
    args = parser.parse_args()
    rows = generate(args.out, args.seed)
    fields = ["path", "condition", "label", "source", "polarity"]
    with (args.out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    found = digest(args.out, rows)
    pinned = HERE / "expected.sha256"
    if args.update_hash or not pinned.exists():
        pinned.write_text(found + "\n")
        print(f"{len(rows)} files, sha256 {found} (pinned)")
        return 0
    expected = pinned.read_text().strip()
    if found != expected:
        print(
            f"field set hash {found} differs from the pinned {expected}: another Pillow, libjpeg or "
            "font version draws different files; figures from it are not comparable",
            file=sys.stderr,
        )
        return 1
    print(f"{len(rows)} files, sha256 {found} (as pinned)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
