"""Typed results returned by the client library."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """One image's answer, and which model version gave it."""

    label: int
    confidence: float
    probabilities: np.ndarray | None
    model_name: str
    model_version: str
    preprocessed: np.ndarray | None = None  # uint8 [28,28]: what the model saw, when asked


@dataclass(frozen=True)
class BatchResult:
    """Many answers as arrays (no per-image objects): what batch jobs want."""

    labels: np.ndarray  # int64 [N]; -1 for an item listed in errors
    confidences: np.ndarray  # float32 [N]; 0 for an item listed in errors
    probabilities: np.ndarray | None  # float32 [N,10] when requested
    model_name: str
    model_version: str
    errors: dict[int, str] = field(default_factory=dict)  # index → "CODE: message"

    def __len__(self) -> int:
        return len(self.labels)

    def predictions(self) -> list[Prediction]:
        return [
            Prediction(
                int(self.labels[i]),
                float(self.confidences[i]),
                None if self.probabilities is None else self.probabilities[i],
                self.model_name,
                self.model_version,
            )
            for i in range(len(self.labels))
        ]


class ClassifyError(RuntimeError):
    """A call failed; ``code`` is the gRPC status name (e.g. 'INVALID_ARGUMENT')."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
