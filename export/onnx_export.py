"""torch → ONNX with the dynamo exporter, a dynamic batch axis and the contract's names."""

from __future__ import annotations

import io
import logging
import warnings

import onnx
import torch

from mnist_serving.common.contract import IMAGE_SHAPE, INPUT, OPSET, OUTPUT_LABEL, OUTPUT_PROBABILITIES
from mnist_serving.export.serving_model import ServingModel


class ExportError(RuntimeError):
    """The exported graph does not satisfy the model contract."""


def export_onnx(model: ServingModel) -> onnx.ModelProto:
    """Export to an in-memory, single-file ONNX model and check it against the contract."""
    model.eval()
    example = torch.zeros((2, *IMAGE_SHAPE), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    # torch's registry logs one line per torchvision op it cannot find; this model has none.
    registration_log.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=DeprecationWarning)
        # torch.export's own pytree internals (not our call) emit this one.
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning
        )
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT.name],
            output_names=[OUTPUT_PROBABILITIES.name, OUTPUT_LABEL.name],
            dynamic_shapes={"image": {0: batch}},
            opset_version=OPSET,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    registration_log.setLevel(level)
    buffer = io.BytesIO()
    program.save(buffer, external_data=False)
    proto = onnx.load_from_string(buffer.getvalue())
    check_contract(proto)
    return proto


def check_contract(proto: onnx.ModelProto) -> None:
    """onnx.checker plus the contract's names, element types and ranks."""
    onnx.checker.check_model(proto, full_check=True)
    elem = {
        INPUT.name: onnx.TensorProto.UINT8,
        OUTPUT_PROBABILITIES.name: onnx.TensorProto.FLOAT,
        OUTPUT_LABEL.name: onnx.TensorProto.INT64,
    }
    ranks = {INPUT.name: 3, OUTPUT_PROBABILITIES.name: 2, OUTPUT_LABEL.name: 1}
    graph_inputs = {i.name: i for i in proto.graph.input}
    graph_outputs = {o.name: o for o in proto.graph.output}
    if set(graph_inputs) != {INPUT.name}:
        raise ExportError(f"graph inputs {sorted(graph_inputs)} != ['{INPUT.name}']")
    if set(graph_outputs) != {OUTPUT_PROBABILITIES.name, OUTPUT_LABEL.name}:
        raise ExportError(f"graph outputs {sorted(graph_outputs)} do not match the contract")
    for name, value in {**graph_inputs, **graph_outputs}.items():
        tensor = value.type.tensor_type
        if tensor.elem_type != elem[name]:
            raise ExportError(f"{name}: element type {tensor.elem_type} != {elem[name]}")
        dims = tensor.shape.dim
        if len(dims) != ranks[name]:
            raise ExportError(f"{name}: rank {len(dims)} != {ranks[name]}")
        if dims[0].HasField("dim_value"):
            raise ExportError(f"{name}: batch axis is fixed at {dims[0].dim_value}, must be dynamic")
