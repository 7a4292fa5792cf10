"""Triton Inference Server (via PyTriton) serving the same ONNX model (benchmark peer).

Usage: python pytriton_server.py MODEL.onnx GRPC_PORT HTTP_PORT METRICS_PORT
"""

import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

model_path, grpc_port, http_port, metrics_port = sys.argv[1], *map(int, sys.argv[2:5])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


@batch
def infer(image):
    probabilities, labels = session.run(None, {"image": image.astype(np.uint8, copy=False)})
    return {"probabilities": probabilities, "label": labels.reshape(-1, 1)}


config = TritonConfig(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, log_verbose=0)
with Triton(config=config) as triton:
    triton.bind(
        model_name="mnist",
        infer_func=infer,
        inputs=[Tensor(name="image", dtype=np.uint8, shape=(28, 28))],
        outputs=[
            Tensor(name="probabilities", dtype=np.float32, shape=(10,)),
            Tensor(name="label", dtype=np.int64, shape=(1,)),
        ],
        config=ModelConfig(max_batch_size=1024, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
        strict=False,
    )
    print("pytriton ready", flush=True)
    triton.serve()
