"""Client library and CLI (needs the [client] extra; never imports torch or onnxruntime).

from mnist_serving.client import Client
with Client("localhost:50051") as client:
    print(client.classify("digit.png").label)
"""

from mnist_serving.client.client import AsyncClient, Client, ClientOptions
from mnist_serving.client.results import BatchResult, ClassifyError, Prediction

__all__ = ["AsyncClient", "BatchResult", "ClassifyError", "Client", "ClientOptions", "Prediction"]
