"""`mnist-train`: train a recipe into a new run directory under runs/."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mnist_serving.common import model_repository
from mnist_serving.common.contract import MODEL_NAME
from mnist_serving.common.mnist_data import DataError, load_mnist
from mnist_serving.common.model_repository import env_flag
from mnist_serving.train import artifacts
from mnist_serving.train.model import CHECKPOINT, MnistMLP, Normalize, summary
from mnist_serving.train.recipes import RECIPES, get_recipe
from mnist_serving.train.trainer import evaluate, fit

FINAL_CHECKPOINT = "final.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-train",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="default",
        help="'seed' reproduces the Keras walk-through; 'default' is the better one",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=_env_int("MNIST_SERVING_TRAIN_EPOCHS"),
        help="override the recipe's epoch count (env MNIST_SERVING_TRAIN_EPOCHS; empty: the recipe's)",
    )
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument("--lr", type=float, help="override the recipe's (peak) learning rate")
    parser.add_argument(
        "--checkpoint-metric",
        choices=["val_loss", "val_acc"],
        help="what 'best' means when selecting the checkpoint",
    )
    parser.add_argument("--seed", type=int, default=0, help="makes runs reproducible")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--data-dir", type=Path, help="a directory of the four MNIST IDX files (else cache / download)"
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where new run directories are created"
    )
    parser.add_argument("--run-dir", type=Path, help="exact run directory to write")
    parser.add_argument("--train-subset", type=int, help="use only the first N training images (smoke tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--skip-if-published",
        type=Path,
        metavar="MODEL_REPOSITORY",
        help="do nothing (exit 0) when this repository already has a published model",
    )
    parser.add_argument(
        "--new-version",
        action="store_true",
        default=env_flag("MNIST_SERVING_NEW_VERSION"),
        help="train even when --skip-if-published finds a model (env MNIST_SERVING_NEW_VERSION=1)",
    )
    return parser.parse_args(argv)


def _env_int(name: str) -> int | None:
    """An optional integer from the environment; empty means unset (compose passes empty)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"mnist-train: {name}={value!r}: expected an integer") from None


def new_run_dir(runs_dir: Path, recipe: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in range(1000):
        path = runs_dir / f"{stamp}-{recipe}" if suffix == 0 else runs_dir / f"{stamp}-{recipe}-{suffix}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {runs_dir}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.skip_if_published is not None and not args.new_version:
        published = model_repository.published_model(args.skip_if_published, MODEL_NAME)
        if published is not None:
            print(f"model already published ({published}); skipping training")
            return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = get_recipe(
        args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_metric=args.checkpoint_metric,
    )
    try:
        data = load_mnist(args.data_dir)
    except DataError as exc:
        print(f"mnist-train: {exc}", file=sys.stderr)
        return 2
    x_train, y_train = data.x_train, data.y_train
    if args.train_subset:
        x_train, y_train = x_train[: args.train_subset], y_train[: args.train_subset]
    run_dir = args.run_dir or new_run_dir(args.runs_dir, recipe.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"data: {data.source} (sha256 {data.sha256()[:16]}…), {len(x_train)} training images")
    print(f"recipe: {json.dumps(recipe.as_dict())}")

    torch.manual_seed(args.seed)
    normalize = Normalize(recipe.normalize_mean, recipe.normalize_std)
    test_x = torch.from_numpy(data.x_test.astype(np.float32))
    test_y = torch.from_numpy(data.y_test.astype(np.int64))
    untrained = MnistMLP()
    print(summary(untrained))
    _, untrained_acc, _ = evaluate(untrained, normalize, test_x, test_y)
    print(f"untrained test accuracy: {untrained_acc:.4f}")

    result = fit(recipe, x_train, y_train, seed=args.seed, progress=not args.no_progress)
    model = MnistMLP()
    model.load_state_dict(result.final_state)
    final_loss, final_acc, _ = evaluate(model, normalize, test_x, test_y)
    model.load_state_dict(result.best_state)
    best_loss, best_acc, predicted = evaluate(model, normalize, test_x, test_y)

    torch.save(result.best_state, run_dir / CHECKPOINT)
    torch.save(result.final_state, run_dir / FINAL_CHECKPOINT)
    config = {
        "recipe": recipe.as_dict(),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "train_images": len(x_train),
        "data_source": data.source,
        "data_sha256": data.sha256(),
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    report = {
        "best_epoch": result.best_epoch,
        "checkpoint_metric": recipe.checkpoint_metric,
        "test_accuracy": best_acc,
        "test_loss": best_loss,
        "final_epoch_test_accuracy": final_acc,
        "final_epoch_test_loss": final_loss,
        "untrained_test_accuracy": untrained_acc,
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": result.train_seconds / max(1, len(result.history)),
        "images_per_second": len(x_train) * len(result.history) / result.train_seconds,
    }
    (run_dir / "summary.json").write_text(json.dumps(report, indent=2))
    artifacts.write_metrics(run_dir, result.history)
    artifacts.plot_curves(run_dir, result.history, result.best_epoch)
    artifacts.plot_samples(run_dir, data.x_train, data.y_train)
    matrix = artifacts.confusion_matrix(data.y_test, predicted)
    artifacts.plot_confusion(run_dir, matrix)

    print(
        f"trained {len(result.history)} epochs in {result.train_seconds:.1f} s "
        f"({report['images_per_second']:.0f} images/s)"
    )
    print(
        f"selected epoch {result.best_epoch} (best {recipe.checkpoint_metric}): test accuracy {best_acc:.4f}"
    )
    print(f"final epoch {len(result.history)}: test accuracy {final_acc:.4f}")
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
