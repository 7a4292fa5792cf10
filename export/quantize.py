"""int8 dynamic quantisation, published only if it keeps the fp32 model's answers."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from mnist_serving.export.parity import cpu_session, run_onnx

MAX_ACCURACY_DROP = 0.003  # 0.3 points
MIN_AGREEMENT = 0.998


@dataclass(frozen=True)
class QuantReport:
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float

    @property
    def passed(self) -> bool:
        return (
            self.fp32_accuracy - self.int8_accuracy <= MAX_ACCURACY_DROP and self.agreement >= MIN_AGREEMENT
        )

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "max_accuracy_drop": MAX_ACCURACY_DROP,
            "min_agreement": MIN_AGREEMENT,
            "passed": self.passed,
        }

    def describe(self) -> str:
        return (
            f"int8: accuracy {self.int8_accuracy:.4f} vs fp32 {self.fp32_accuracy:.4f}, "
            f"labels agree on {self.agreement:.2%}"
        )


def quantize_int8(fp32_bytes: bytes) -> bytes:
    """onnxruntime dynamic quantisation: int8 weights, activations quantised per batch."""
    proto = onnx.load_from_string(fp32_bytes)
    # The quantiser rewrites Gemm weights; stale shape annotations would contradict it.
    del proto.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, source)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        return target.read_bytes()


def compare(fp32_bytes: bytes, int8_bytes: bytes, images: np.ndarray, labels: np.ndarray) -> QuantReport:
    _, fp32_labels = run_onnx(cpu_session(fp32_bytes), images)
    _, int8_labels = run_onnx(cpu_session(int8_bytes), images)
    return QuantReport(
        fp32_accuracy=float((fp32_labels == labels).mean()),
        int8_accuracy=float((int8_labels == labels).mean()),
        agreement=float((fp32_labels == int8_labels).mean()),
    )
