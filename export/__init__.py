"""ONNX export with a parity gate, and publishing into the model repository."""
