"""Client library and CLI (needs the [client] extra; never imports torch or onnxruntime).

from mnist_serving.client import Client
with Client("localhost:50051") as client:
    print(client.classify("digit.png").label)
"""

from mnist_serving.client.client import AsyncClient, Client, ClientOptions
from mnist_serving.client.inputs import preprocess_image
from mnist_serving.client.results import BatchResult, ClassifyError, Prediction
from mnist_serving.common.preprocess import PREPROCESSING_VERSION, ImageError, NoDigitFound

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
