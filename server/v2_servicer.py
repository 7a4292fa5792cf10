"""inference.GRPCInferenceService, Triton's superset of KServe v2: the codec converts, the data
plane classifies and answers the extensions (configuration, statistics, repository, model
control). ModelInfer is all-or-nothing, as the protocol defines; ModelStreamInfer answers each
message on its own, in order, and one message's error leaves the stream open.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from mnist_serving.common import __version__
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc
from mnist_serving.server import codec
from mnist_serving.server.calls import CURRENT_CALL, CallFailed, header
from mnist_serving.server.dataplane import DataPlane
from mnist_serving.server.errors import InvalidInput, ServingError, Unimplemented
from mnist_serving.server.ordered_stream import answer_in_order
from mnist_serving.server.triton_documents import EXTENSIONS, SHARED_MEMORY

API = "inference"
STREAM_WINDOW = 16  # stream messages in work at once: bounds memory, gives back-pressure


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, max_request_images: int) -> None:
        self.dataplane = dataplane
        self.max_request_images = max_request_images

    # --- health and metadata -----------------------------------------------------------

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
        return v2.ServerMetadataResponse(name="mnist-serving", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelMetadataResponse:
        return self.dataplane.metadata(request.name, request.version)

    # --- inference ---------------------------------------------------------------------

    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext | None = None
    ) -> v2.ModelInferResponse:
        images, raw, requested = codec.v2_request(request, self.max_request_images)
        if request.parameters:
            timeout = codec.timeout_parameter(request.parameters)
            call = CURRENT_CALL.get()
            if timeout is not None and call is not None:  # Triton's per-request `timeout` (µs)
                deadline = time.monotonic() + timeout
                call.deadline = deadline if call.deadline is None else min(call.deadline, deadline)
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

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[v2.ModelInferRequest | ServingError],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[v2.ModelStreamInferResponse]:
        """Each message is a call of its own (admission, deadline, metrics, statistics); its
        answer carries its id, in the order sent. The token was checked when the stream opened
        (``DataPlaneInterceptor``)."""
        authorization = header(context.invocation_metadata(), "authorization")

        async def answer(message: v2.ModelInferRequest | ServingError) -> v2.ModelStreamInferResponse:
            request_id = "" if isinstance(message, ServingError) else message.id
            remaining = context.time_remaining()
            try:
                # The request's own id names it in logs and traces, as x-request-id would.
                async with self.dataplane.call(API, "ModelStreamInfer", authorization, request_id, remaining):
                    if isinstance(message, ServingError):
                        raise message  # a message that is not a ModelInferRequest
                    return v2.ModelStreamInferResponse(infer_response=await self.ModelInfer(message))
            except CallFailed as failed:
                return v2.ModelStreamInferResponse(
                    error_message=f"{failed.status.name}: {failed.message}",
                    infer_response=v2.ModelInferResponse(id=request_id),
                )

        async for response in answer_in_order(request_iterator, answer, STREAM_WINDOW):
            yield response

    # --- Triton's extensions ------------------------------------------------------------

    async def ModelConfig(
        self, request: v2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelConfigResponse:
        return self.dataplane.model_config(request.name, request.version)

    async def ModelStatistics(
        self, request: v2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelStatisticsResponse:
        return self.dataplane.statistics(request.name, request.version)

    async def RepositoryIndex(
        self, request: v2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryIndexResponse:
        _one_repository(request.repository_name)
        return self.dataplane.repository_index(request.ready)

    async def RepositoryModelLoad(
        self, request: v2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryModelLoadResponse:
        _one_repository(request.repository_name)
        authorization = header(context.invocation_metadata(), "authorization")
        await self.dataplane.load(request.model_name, dict(request.parameters), authorization)
        return v2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: v2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryModelUnloadResponse:
        _one_repository(request.repository_name)
        authorization = header(context.invocation_metadata(), "authorization")
        await self.dataplane.unload(request.model_name, authorization)
        return v2.RepositoryModelUnloadResponse()

    # --- what this server has instead ----------------------------------------------------

    async def SystemSharedMemoryStatus(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise Unimplemented(SHARED_MEMORY)

    SystemSharedMemoryRegister = SystemSharedMemoryUnregister = SystemSharedMemoryStatus
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = SystemSharedMemoryStatus

    async def TraceSetting(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise Unimplemented(
            "trace settings are not offered: tracing is OpenTelemetry, set by OTEL_* variables "
            "at start (docs/operations.md)"
        )

    async def LogSettings(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise Unimplemented("log settings are not offered: use --log-level and --log-format at start")


def _one_repository(name: str) -> None:
    """This server has one repository (--model-repository); a named one is not it."""
    if name:
        raise InvalidInput(
            f"'{name[:100]}': this server has one repository (--model-repository); leave it empty",
            "repository_name",
        )
