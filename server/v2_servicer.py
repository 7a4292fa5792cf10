"""inference.GRPCInferenceService (KServe v2 / Open Inference Protocol): the codec converts,
the data plane classifies. ModelInfer is all-or-nothing, as the protocol defines."""

from __future__ import annotations

import grpc

from mnist_serving.common import __version__
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from mnist_serving.server import codec
from mnist_serving.server.dataplane import DataPlane
from mnist_serving.server.errors import ServingError


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, max_request_images: int) -> None:
        self.dataplane = dataplane
        self.max_request_images = max_request_images

    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelReadyResponse:
        try:
            self.dataplane.model(request.name, request.version)
        except ServingError:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=self.dataplane.ready())

    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="mnist-serving", version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelMetadataResponse:
        return self.dataplane.metadata(request.name, request.version)

    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelInferResponse:
        images, raw, requested = codec.v2_request(request, self.max_request_images)
        result = await self.dataplane.classify(request.model_name, request.model_version, images)
        return codec.v2_response(
            request.id,
            result.probabilities,
            result.labels,
            raw,
            requested,
            result.model.name,
            result.model.version_str,
        )
