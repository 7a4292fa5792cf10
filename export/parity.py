"""The parity gate: onnxruntime must reproduce PyTorch on the whole test set."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch

from mnist_serving.common.contract import INPUT, OUTPUT_LABEL, OUTPUT_PROBABILITIES

MAX_ABS_DIFF = 1e-5


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree: the model must not be published."""


@dataclass(frozen=True)
class ParityReport:
    images: int
    labels_equal: int
    max_abs_diff: float
    tolerance: float
    onnx_accuracy: float
    torch_accuracy: float

    @property
    def passed(self) -> bool:
        return self.labels_equal == self.images and self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        return (
            f"parity: {self.labels_equal}/{self.images} labels equal, "
            f"max |Δprob| {self.max_abs_diff:.2e} (limit {self.tolerance:.0e}), "
            f"onnx accuracy {self.onnx_accuracy:.4f}, torch accuracy {self.torch_accuracy:.4f}"
        )


def cpu_session(onnx_bytes: bytes, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def run_onnx(
    session: ort.InferenceSession, images: np.ndarray, batch: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """All probabilities and labels for ``images`` (uint8 [N,28,28])."""
    probs, labels = [], []
    for start in range(0, len(images), batch):
        p, label = session.run(
            [OUTPUT_PROBABILITIES.name, OUTPUT_LABEL.name], {INPUT.name: images[start : start + batch]}
        )
        probs.append(p)
        labels.append(label)
    return np.concatenate(probs), np.concatenate(labels)


def run_torch(model: torch.nn.Module, images: np.ndarray, batch: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            p, label = model(torch.from_numpy(images[start : start + batch]))
            probs.append(p.numpy())
            labels.append(label.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def check_parity(
    onnx_bytes: bytes,
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    tolerance: float = MAX_ABS_DIFF,
) -> ParityReport:
    """Compare onnxruntime (CPU) with PyTorch in eval mode on every image given."""
    onnx_probs, onnx_labels = run_onnx(cpu_session(onnx_bytes), images)
    torch_probs, torch_labels = run_torch(model, images)
    return ParityReport(
        images=len(images),
        labels_equal=int((onnx_labels == torch_labels).sum()),
        max_abs_diff=float(np.abs(onnx_probs - torch_probs).max()),
        tolerance=tolerance,
        onnx_accuracy=float((onnx_labels == labels).mean()),
        torch_accuracy=float((torch_labels == labels).mean()),
    )
