"""The graph that gets served: raw uint8 pixels in, probabilities and label out.

The ONNX model owns its preprocessing, so no client or server can normalise differently
from training.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_serving.train.model import MnistMLP, Normalize


class ServingModel(nn.Module):
    """image uint8 [N,28,28] → /255 → normalise → MLP → (softmax probabilities, argmax label)."""

    def __init__(self, mlp: MnistMLP, mean: float, std: float) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.mlp = mlp

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.mlp(self.normalize(image))
        probabilities = torch.softmax(logits, dim=1)
        label = torch.argmax(logits, dim=1)
        return probabilities, label


def load_serving_model(checkpoint: str, mean: float, std: float) -> ServingModel:
    """Rebuild the serving graph from a run's state_dict (``weights_only``: never unpickles code)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    mlp = MnistMLP()
    mlp.load_state_dict(state)
    model = ServingModel(mlp, mean, std)
    model.eval()
    return model
