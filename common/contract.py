"""The model contract: the one definition of the served model's tensors.

Training, export, the server and the client all import these names, so a change
here is a change everywhere (and a mismatch is caught at load time, not in production).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL_NAME = "mnist"
"""Name of the fp32 model in the repository and over the v2 protocol."""

INT8_MODEL_NAME = "mnist-int8"
"""Name of the dynamically quantised variant."""

IMAGE_HEIGHT = 28
IMAGE_WIDTH = 28
IMAGE_SHAPE = (IMAGE_HEIGHT, IMAGE_WIDTH)
IMAGE_PIXELS = IMAGE_HEIGHT * IMAGE_WIDTH
NUM_CLASSES = 10
NO_LABEL = 255
"""The label byte of an item that could not be classified (packed uint8 labels of a batch)."""
NO_DIGIT_FOUND = "no digit found"
"""How an encoded image that is blank or nearly so is answered (INVALID_ARGUMENT for one image,
an item error in a batch): the message starts with the field, then this phrase."""
OPSET = 18


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: -1 marks the dynamic batch axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    v2_datatype: str

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form for sidecars and metadata."""
        return {"name": self.name, "datatype": self.v2_datatype, "shape": list(self.shape)}


INPUT = TensorSpec("image", np.dtype(np.uint8), (-1, IMAGE_HEIGHT, IMAGE_WIDTH), "UINT8")
OUTPUT_PROBABILITIES = TensorSpec("probabilities", np.dtype(np.float32), (-1, NUM_CLASSES), "FP32")
OUTPUT_LABEL = TensorSpec("label", np.dtype(np.int64), (-1,), "INT64")
OUTPUTS = (OUTPUT_PROBABILITIES, OUTPUT_LABEL)

MODEL_FILENAME = "model.onnx"
SIDECAR_FILENAME = "model.json"


def pixels_from_unit_floats(values: np.ndarray) -> np.ndarray:
    """Float pixels in [0,1] → the contract's uint8 pixels (x·255 rounded).

    The one conversion used by the server (FP32 and float-pixel inputs) and the client, so
    both agree on what a float image means. Raises ValueError for NaN, Inf or out-of-range.
    """
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("contains NaN or Inf; expected finite values in [0, 1]")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(f"values range over [{values.min():g}, {values.max():g}]; expected [0, 1]")
    return np.rint(values * 255.0).astype(np.uint8)


def contract_dict() -> dict[str, object]:
    """The contract as recorded in each published model's sidecar and metadata."""
    return {
        "inputs": [INPUT.as_dict()],
        "outputs": [spec.as_dict() for spec in OUTPUTS],
    }


def metadata_document(metadata: Any) -> dict[str, Any]:
    """A v2 ModelMetadataResponse as JSON: what REST answers and ``mnist-classify info`` prints."""
    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.inputs],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.outputs
        ],
        "parameters": {key: value.string_param for key, value in metadata.parameters.items()},
    }
