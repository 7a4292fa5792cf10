"""What a run leaves behind: metrics files and plots a person can read."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnist_serving.common.contract import NUM_CLASSES
from mnist_serving.train.trainer import EpochMetrics  # noqa: E402


def write_metrics(run_dir: Path, history: list[EpochMetrics]) -> None:
    rows = [asdict(m) for m in history]
    (run_dir / "metrics.json").write_text(json.dumps(rows, indent=2))
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["epoch"])
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(run_dir: Path, history: list[EpochMetrics], best_epoch: int) -> None:
    """The walk-through's "model loss" graph, and its accuracy twin."""
    epochs = [m.epoch for m in history]
    for key, title in (("loss", "model loss"), ("acc", "model accuracy")):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(epochs, [getattr(m, f"train_{key}") for m in history], label="train")
        ax.plot(epochs, [getattr(m, f"val_{key}") for m in history], label="validation")
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"selected (epoch {best_epoch})")
        ax.set(title=title, xlabel="epoch", ylabel=key)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / f"{'loss' if key == 'loss' else 'accuracy'}.png", dpi=100)
        plt.close(fig)


def plot_samples(run_dir: Path, images: np.ndarray, labels: np.ndarray, count: int = 25) -> None:
    side = int(np.ceil(np.sqrt(count)))
    fig, axes = plt.subplots(side, side, figsize=(side * 1.2, side * 1.3))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < min(count, len(images)):
            ax.imshow(images[i], cmap="gray_r")
            ax.set_title(str(int(labels[i])), fontsize=9)
    fig.suptitle("training samples")
    fig.tight_layout()
    fig.savefig(run_dir / "samples.png", dpi=100)
    plt.close(fig)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = NUM_CLASSES) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def plot_confusion(run_dir: Path, matrix: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set(
        xticks=range(NUM_CLASSES),
        yticks=range(NUM_CLASSES),
        xlabel="predicted",
        ylabel="true",
        title=f"test confusion matrix (accuracy {np.trace(matrix) / matrix.sum():.4f})",
    )
    fig.tight_layout()
    fig.savefig(run_dir / "confusion.png", dpi=100)
    plt.close(fig)
