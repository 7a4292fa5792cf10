"""inference.GRPCInferenceService (KServe v2 / Open Inference Protocol)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from mnist_serving import __version__
from mnist_serving.contract import contract_dict
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mnist_serving.server import codec
from mnist_serving.server.errors import ServingError
from mnist_serving.server.lifecycle import Lifecycle
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.models import ModelStore
from mnist_serving.server.rpc import deadline_of, unary

API = "inference"
PLATFORM = "onnxruntime_onnx"


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        store: ModelStore,
        metrics: Metrics,
        max_request_images: int,
        is_ready: Callable[[], bool],
        lifecycle: Lifecycle,
    ) -> None:
        self.lifecycle = lifecycle
        self.store = store
        self.metrics = metrics
        self.max_request_images = max_request_images
        self.is_ready = is_ready

    @unary(API)
    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    @unary(API)
    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.is_ready())

    @unary(API)
    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelReadyResponse:
        try:
            self.store.get(request.name, request.version)
        except ServingError:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=self.is_ready())

    @unary(API)
    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="mnist-serving", version=__version__, extensions=[])

    @unary(API)
    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelMetadataResponse:
        model = self.store.get(request.name, request.version)
        contract = contract_dict()
        inputs, outputs = contract["inputs"], contract["outputs"]
        versions = sorted(self.store.models[model.name])
        return v2.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in versions],
            platform=PLATFORM,
            inputs=[v2.ModelMetadataResponse.TensorMetadata(**t) for t in inputs],
            outputs=[v2.ModelMetadataResponse.TensorMetadata(**t) for t in outputs],
        )

    @unary(API)
    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelInferResponse:
        model = self.store.get(request.model_name, request.model_version)
        images, raw, requested = codec.decode_infer_request(request, self.max_request_images)
        probabilities, labels = await model.batcher.infer(images, deadline_of(context))
        return codec.encode_infer_response(
            request, probabilities, labels, raw, requested, model.name, model.version_str
        )
