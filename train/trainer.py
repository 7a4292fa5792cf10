"""The training loop: whole-tensor batching in memory, since MNIST fits and loaders cost time."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from mnist_serving.train import augment
from mnist_serving.train.model import MnistMLP, Normalize
from mnist_serving.train.recipes import Recipe


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    """The selected (best-validation) model, the final one, and the history."""

    best_state: dict[str, torch.Tensor]
    final_state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random offset in [-max_shift, max_shift] (zero fill)."""
    if max_shift <= 0:
        return images
    n, h, w = images.shape
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = torch.arange(h).unsqueeze(0) + offsets[0].unsqueeze(1)  # n,h
    cols = torch.arange(w).unsqueeze(0) + offsets[1].unsqueeze(1)  # n,w
    index = torch.arange(n)[:, None, None]
    return padded[index, rows[:, :, None], cols[:, None, :]]


def evaluate(
    model: nn.Module,
    normalize: Normalize,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 2048,
) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and predicted labels, in eval mode."""
    model.eval()
    total_loss, predictions = 0.0, []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(normalize(images[start : start + batch_size]))
            target = labels[start : start + batch_size]
            total_loss += F.cross_entropy(logits, target, reduction="sum").item()
            predictions.append(logits.argmax(1))
    predicted = torch.cat(predictions)
    accuracy = (predicted == labels).float().mean().item()
    return total_loss / len(images), accuracy, predicted.numpy()


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "rmsprop":
        # Keras's RMSprop(rho=0.9, epsilon=1e-7) is torch's alpha=rho, eps=eps.
        return torch.optim.RMSprop(model.parameters(), lr=recipe.lr, alpha=recipe.rho, eps=recipe.eps)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def fit(
    recipe: Recipe,
    x_train: np.ndarray,
    y_train: np.ndarray,
    seed: int,
    progress: bool = True,
) -> FitResult:
    """Train on the first (1 - val_fraction) of the training set, select on the rest."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    n_val = int(round(len(x_train) * recipe.val_fraction))
    n_fit = len(x_train) - n_val
    images = torch.from_numpy(x_train.astype(np.float32))
    labels = torch.from_numpy(y_train.astype(np.int64))
    fit_x, fit_y = images[:n_fit], labels[:n_fit]
    val_x, val_y = images[n_fit:], labels[n_fit:]

    model = MnistMLP()
    normalize = Normalize(recipe.normalize_mean, recipe.normalize_std)
    optimizer = _optimizer(model, recipe)
    steps_per_epoch = (n_fit + recipe.batch_size - 1) // recipe.batch_size
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch
        )
        if recipe.one_cycle
        else None
    )
    result = FitResult(best_state={}, final_state={}, best_epoch=0)
    best_score = None
    started = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(n_fit, generator=generator)
        seen, loss_sum, correct = 0, 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{recipe.epochs}",
            disable=not progress,
            leave=True,
            unit="batch",
        )
        for step in bar:
            index = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            batch = (
                augment.distort(fit_x[index], augment.Augmentation(), generator)
                if recipe.augment
                else random_shift(fit_x[index], recipe.max_shift, generator)
            )
            target = fit_y[index]
            logits = model(normalize(batch))
            loss = F.cross_entropy(logits, target, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            seen += len(index)
            loss_sum += loss.item() * len(index)
            correct += (logits.argmax(1) == target).sum().item()
            if step % 20 == 0 or step == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        val_loss, val_acc, _ = evaluate(model, normalize, val_x, val_y) if n_val else (0.0, 0.0, None)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / seen,
            train_acc=correct / seen,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - epoch_start,
        )
        result.history.append(metrics)
        if progress:
            tqdm.write(
                f"epoch {epoch}: train loss {metrics.train_loss:.4f} acc {metrics.train_acc:.4f}"
                f" | val loss {val_loss:.4f} acc {val_acc:.4f}"
            )
        score = -val_loss if recipe.checkpoint_metric == "val_loss" else val_acc
        if best_score is None or score > best_score:
            best_score, result.best_epoch = score, epoch
            result.best_state = copy.deepcopy(model.state_dict())
    result.train_seconds = time.perf_counter() - started
    result.final_state = copy.deepcopy(model.state_dict())
    return result
