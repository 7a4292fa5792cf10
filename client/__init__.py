"""Client library (the [client] extra; never imports torch, onnxruntime or image decoders).

from mnist_serving.client import Client
with Client("localhost:50051") as client:
    print(client.classify("digit.png").label)

The batch tool behind ``mnist-classify`` lives in ``mnist_serving.client.batch``.
"""

from mnist_serving.client.client import AsyncClient, Client
from mnist_serving.client.inputs import preprocess_image
from mnist_serving.client.options import ClientOptions
from mnist_serving.client.results import BatchResult, ClassifyError, Prediction
from mnist_serving.common.preprocess_contract import PREPROCESSING_VERSION, ImageError, NoDigitFound

__all__ = [
    "PREPROCESSING_VERSION",
    "AsyncClient",
    "BatchResult",
    "ClassifyError",
    "Client",
    "ClientOptions",
    "ImageError",
    "NoDigitFound",
    "Prediction",
    "preprocess_image",
]
