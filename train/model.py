"""The classifier: the classic Keras MNIST multilayer perceptron, in PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from mnist_serving.common.contract import IMAGE_PIXELS, IMAGE_SHAPE, NUM_CLASSES

CHECKPOINT = "model.pt"
"""The best epoch's weights in a run directory: what mnist-export reads."""
HIDDEN = 512
DROPOUT = 0.2


class MnistMLP(nn.Module):
    """Flatten → 784-512-512-10 with ReLU and dropout 0.2: 669,706 parameters, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.dense = nn.Linear(IMAGE_PIXELS, HIDDEN)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(DROPOUT)
        self.dense_1 = nn.Linear(HIDDEN, HIDDEN)
        self.relu_1 = nn.ReLU()
        self.dropout_1 = nn.Dropout(DROPOUT)
        self.dense_2 = nn.Linear(HIDDEN, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.relu(self.dense(self.flatten(x))))
        x = self.dropout_1(self.relu_1(self.dense_1(x)))
        return self.dense_2(x)


class Normalize(nn.Module):
    """uint8 or [0,255] pixels → x/255 → (x - mean) / std, the recipe's input scaling.

    It is part of the exported graph, so clients send raw pixels and can never get the
    normalisation wrong.
    """

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.to(torch.float32) / 255.0 - self.mean) / self.std


def summary(model: nn.Module) -> str:
    """A table like Keras's ``model.summary()``, so the seed walk-through can be compared."""
    rows = [("Layer (type)", "Output Shape", "Param #")]
    shape: tuple[int | None, ...] = (None, *IMAGE_SHAPE)
    total = 0
    for name, module in model.named_children():
        params = sum(p.numel() for p in module.parameters())
        total += params
        if isinstance(module, nn.Flatten):
            shape = (None, IMAGE_PIXELS)
        elif isinstance(module, nn.Linear):
            shape = (None, module.out_features)
        rows.append((f"{name} ({type(module).__name__})", str(shape), f"{params:,}"))
    widths = [max(len(r[i]) for r in rows) + 4 for i in range(3)]
    rule = "=" * sum(widths)
    lines = [rule, "".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)), rule]
    lines += ["".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows[1:]]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines += [
        rule,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        rule,
    ]
    return "\n".join(lines)
