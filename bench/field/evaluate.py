"""Accuracy per field condition, for preprocessing versions and models side by side.

    python bench/field/evaluate.py [--data bench/field/data] [--model NAME=PATH ...]
        [--preprocessing 2,3] [--docs docs/field.md]

Every file of the field set (bench/field/generate.py) goes through the preprocessing (a
process pool, all cores), then through in-process onnxruntime. An image the preprocessing
refuses counts as wrong: every field image holds a digit. MNIST's own test set is the first
row (as arrays: no preprocessing), so a model's gain in the field can be weighed against it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import legacy  # noqa: E402
import pillow_v2  # noqa: E402

from mnist_serving.common import model_repository, preprocess  # noqa: E402
from mnist_serving.common.contract import IMAGE_SHAPE, MODEL_NAME  # noqa: E402
from mnist_serving.common.mnist_data import load_mnist  # noqa: E402

ROOT = HERE.parent.parent
PHOTOS = ("photo, upright", "photo, EXIF-rotated")


def _decode_v1(data: bytes) -> np.ndarray:
    return legacy.decode(data)


def _decode_v2(data: bytes) -> np.ndarray:
    return pillow_v2.decode(data)[0]


def _decode_v3(data: bytes) -> np.ndarray:
    return preprocess.decode(data)[0]


DECODERS = {"1": _decode_v1, "2": _decode_v2, "3": _decode_v3}


def _decode_chunk(args: tuple[str, list[str]]) -> list[tuple[np.ndarray | None, str]]:
    version, paths = args
    out = []
    for path in paths:
        try:
            out.append((DECODERS[version](Path(path).read_bytes()), ""))
        except ValueError as exc:
            out.append((None, str(exc)))
    return out


def preprocess_all(paths: list[Path], version: str) -> tuple[np.ndarray, list[str], float]:
    """All files → [N,28,28] (zeros where refused), the refusal messages, and images/s."""
    chunks = [(version, [str(p) for p in paths[i : i + 64]]) for i in range(0, len(paths), 64)]
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        results = [item for chunk in pool.map(_decode_chunk, chunks) for item in chunk]
    rate = len(paths) / (time.perf_counter() - started)
    images = np.stack([r[0] if r[0] is not None else np.zeros(IMAGE_SHAPE, np.uint8) for r in results])
    return images, [r[1] for r in results], rate


def predict(model: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["label"], {"image": images})[0]


def evaluate(data: Path, models: dict[str, Path], versions: list[str]) -> dict:
    with (data / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    paths = [data / r["path"] for r in rows]
    labels = np.array([int(r["label"]) for r in rows])
    conditions = [r["condition"] for r in rows]
    mnist = load_mnist()
    results: dict = {"conditions": {}, "columns": [], "rates": {}, "refused": {}}
    order = list(dict.fromkeys(conditions))
    for version in versions:
        images, errors, rate = preprocess_all(paths, version)
        results["rates"][version] = rate
        results["refused"][version] = sum(1 for e in errors if e)
        for name, model in models.items():
            column = f"preprocessing v{version}, {name}"
            results["columns"].append(column)
            predicted = predict(model, images)
            right = (predicted == labels) & np.array([not e for e in errors])
            per: dict = defaultdict(list)
            for condition, ok in zip(conditions, right, strict=True):
                per[condition].append(ok)
            per["photos, all"] = [ok for c, ok in zip(conditions, right, strict=True) if c in PHOTOS]
            mnist_acc = float((predict(model, mnist.x_test) == mnist.y_test).mean())
            for condition in ["MNIST test (arrays)", *order, "photos, all"]:
                value = mnist_acc if condition.startswith("MNIST") else float(np.mean(per[condition]))
                count = len(mnist.y_test) if condition.startswith("MNIST") else len(per[condition])
                results["conditions"].setdefault(condition, {"count": count})[column] = value
            if version == versions[-1] and name == list(models)[-1]:
                results["last"] = {
                    "images": images,
                    "predicted": predicted,
                    "labels": labels,
                    "paths": paths,
                    "conditions": conditions,
                    "errors": errors,
                }
    return results


def table(results: dict) -> list[str]:
    columns = results["columns"]
    lines = ["| condition | images | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for condition, row in results["conditions"].items():
        cells = [f"{100 * row[c]:.1f}%" for c in columns]
        lines.append(f"| {condition} | {row['count']:,} | " + " | ".join(cells) + " |")
    return lines


def confusion_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = results["last"]
    matrix = np.zeros((10, 10), int)
    for truth, guess in zip(last["labels"], last["predicted"], strict=True):
        matrix[truth, guess] += 1
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for i in range(10):
        for j in range(10):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if i == j else "black",
                )
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted",
        ylabel="true",
        title=f"field set, {results['columns'][-1]}",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def example_strip(results: dict, path: Path, picks: tuple[int, ...] = (3, 16)) -> None:
    """Inputs (as a viewer shows them: EXIF applied) above the 28×28 the model saw, upscaled;
    the same positions within every condition, not chosen by outcome."""
    last = results["last"]
    picked: list[int] = []
    seen: dict[str, int] = defaultdict(int)
    for i, condition in enumerate(last["conditions"]):
        if seen[condition] in picks:
            picked.append(i)
        seen[condition] += 1
    tile = 112
    strip = Image.new("RGB", (tile * len(picked), 2 * tile + 4), "white")
    for k, i in enumerate(picked):
        with Image.open(last["paths"][i]) as shown:
            shown = ImageOps.exif_transpose(shown).convert("RGB")
            shown.thumbnail((tile, tile))
            strip.paste(shown, (k * tile + (tile - shown.width) // 2, (tile - shown.height) // 2))
        seen_image = Image.fromarray(last["images"][i]).resize((tile, tile), Image.Resampling.NEAREST)
        strip.paste(seen_image.convert("RGB"), (k * tile, tile + 4))
    strip.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH to model.onnx (repeatable)")
    parser.add_argument("--preprocessing", default="2,3", help="versions to compare, e.g. 2,3")
    parser.add_argument(
        "--docs", type=Path, help="also write the confusion matrix and example strip beside this"
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.model) if args.model else {}
    if not models:
        published = model_repository.published_model(ROOT / "models", MODEL_NAME)
        if published is None:
            raise SystemExit("no published model: run `make run` first, or pass --model NAME=PATH")
        models = {f"model v{Path(published).parent.name}": published}
    models = {k: Path(v) for k, v in models.items()}
    versions = [v.strip() for v in args.preprocessing.split(",")]
    results = evaluate(args.data, models, versions)
    print("\n".join(table(results)))
    for version, rate in results["rates"].items():
        print(
            f"preprocessing v{version}: {rate:,.0f} images/s on {os.cpu_count()} cores, "
            f"{results['refused'][version]} refused"
        )
    if args.docs:
        directory = args.docs.parent
        confusion_plot(results, directory / "field-confusion.png")
        example_strip(results, directory / "field-examples.png")
    if args.json:
        out = {k: v for k, v in results.items() if k != "last"}
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
