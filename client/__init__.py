"""Client library (the [client] extra; never imports torch, onnxruntime or image decoders).

from mnist_serving.client import Client
with Client("localhost:50051") as client:
    print(client.classify("digit.png").label)

The batch tool behind ``mnist-classify`` lives in ``mnist_serving.client.batch``.

Names are imported when first used (PEP 562): a decode worker of the batch tool imports
``mnist_serving.client.batch.job``, which runs this file, and needs none of gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mnist_serving.client.client import AsyncClient, Client
    from mnist_serving.client.inputs import preprocess_image
    from mnist_serving.client.options import ClientOptions
    from mnist_serving.client.results import BatchResult, ClassifyError, Prediction
    from mnist_serving.common.preprocess_contract import PREPROCESSING_VERSION, ImageError, NoDigitFound

_WHERE = {
    "AsyncClient": "mnist_serving.client.client",
    "Client": "mnist_serving.client.client",
    "preprocess_image": "mnist_serving.client.inputs",
    "ClientOptions": "mnist_serving.client.options",
    "BatchResult": "mnist_serving.client.results",
    "ClassifyError": "mnist_serving.client.results",
    "Prediction": "mnist_serving.client.results",
    "PREPROCESSING_VERSION": "mnist_serving.common.preprocess_contract",
    "ImageError": "mnist_serving.common.preprocess_contract",
    "NoDigitFound": "mnist_serving.common.preprocess_contract",
}

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
