"""MLServer custom runtime serving the same ONNX model with onnxruntime (benchmark peer)."""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxMnist(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.uint8, copy=False)
        probabilities, labels = self.session.run(None, {"image": images.reshape(-1, 28, 28)})
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("probabilities", probabilities),
                NumpyCodec.encode_output("label", labels),
            ],
        )
