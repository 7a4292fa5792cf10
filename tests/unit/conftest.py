"""A tiny model that honours the contract, built with onnx.helper: unit tests need no torch.

Its "classifier" is deterministic and easy to check by hand: the label is the row (0-9) of
the first lit pixel in column 0 (0 for a blank image), with probability 1.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mnist_serving.common.contract import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    INPUT,
    MODEL_FILENAME,
    NUM_CLASSES,
    OPSET,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    SIDECAR_FILENAME,
    contract_dict,
)


def tiny_model_bytes() -> bytes:
    """uint8 [N,28,28] → probabilities = one-hot(label), label = first lit row of column 0 (< 10)."""
    # Column 0, rows 0-9, as float; weight rows so the first lit row wins the ArgMax.
    weights = np.zeros((IMAGE_HEIGHT * IMAGE_WIDTH, NUM_CLASSES), np.float32)
    for row in range(NUM_CLASSES):
        weights[row * IMAGE_WIDTH, row] = float(2 ** (NUM_CLASSES - row))
    bias = np.zeros(NUM_CLASSES, np.float32)
    bias[0] = 0.5  # a blank image is a 0
    nodes = [
        helper.make_node("Cast", [INPUT.name], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["scores"]),
        helper.make_node("Add", ["scores", "b"], ["biased"]),
        helper.make_node("ArgMax", ["biased"], [OUTPUT_LABEL.name], axis=1, keepdims=0),
        helper.make_node(
            "OneHot", [OUTPUT_LABEL.name, "depth", "values"], [OUTPUT_PROBABILITIES.name], axis=1
        ),
    ]
    initializers = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [-1, IMAGE_HEIGHT * IMAGE_WIDTH]),
        helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.tobytes(), raw=True),
        helper.make_tensor("b", TensorProto.FLOAT, [NUM_CLASSES], bias),
        helper.make_tensor("depth", TensorProto.INT64, [], [NUM_CLASSES]),
        helper.make_tensor("values", TensorProto.FLOAT, [2], [0.0, 1.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT.name, TensorProto.UINT8, ["N", IMAGE_HEIGHT, IMAGE_WIDTH])],
        [
            helper.make_tensor_value_info(OUTPUT_PROBABILITIES.name, TensorProto.FLOAT, ["N", NUM_CLASSES]),
            helper.make_tensor_value_info(OUTPUT_LABEL.name, TensorProto.INT64, ["N"]),
        ],
        initializers,
    )
    # IR version 10: what every onnxruntime the project supports can load.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def digit(label: int) -> np.ndarray:
    """An image the tiny model classifies as ``label``."""
    image = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8)
    image[label, 0] = 255
    return image


def publish_tiny(repository: Path, name: str, version: int, model: bytes | None = None) -> Path:
    model = tiny_model_bytes() if model is None else model
    directory = repository / name / str(version)
    directory.mkdir(parents=True)
    (directory / MODEL_FILENAME).write_bytes(model)
    sidecar = {
        "contract": contract_dict(),
        "parity": {"passed": True},
        "model_sha256": hashlib.sha256(model).hexdigest(),
    }
    (directory / SIDECAR_FILENAME).write_text(json.dumps(sidecar))
    return directory


@pytest.fixture
def tiny_repository(tmp_path: Path) -> Path:
    publish_tiny(tmp_path, "mnist", 1)
    return tmp_path
