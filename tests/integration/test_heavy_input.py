"""Heavy encoded batches do not stall other callers: order, not time, is asserted."""

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.helpers import scan


def test_a_health_check_started_during_a_heavy_batch_is_answered_first(server):
    blobs = [scan(i % 7) for i in range(600)]  # 600 400x400 JPEG scans in one call
    request = pb.ClassifyBatchRequest(images=[pb.Image(encoded=b) for b in blobs])
    order: list[str] = []

    async def go():
        options = [("grpc.max_send_message_length", 128 << 20)]
        async with grpc.aio.insecure_channel(server.address, options=options) as channel:
            heavy = asyncio.ensure_future(pb_grpc.ClassifierStub(channel).ClassifyBatch(request, timeout=120))
            heavy.add_done_callback(lambda _: order.append("batch"))
            while server.metric("mnist_serving_inflight_requests") < 1:  # the batch is being worked on
                await asyncio.sleep(0.005)  # polling the server's own gauge
            health = health_pb2_grpc.HealthStub(channel)
            status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=60)).status
            order.append("health")
            small = await pb_grpc.ClassifierStub(channel).Classify(
                pb.ClassifyRequest(image=pb.Image(raw=bytes(784))), timeout=60
            )
            order.append("single")
            response = await heavy
        return status, small, response

    status, small, response = asyncio.run(go())
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert order == ["health", "single", "batch"], order
    assert response.count == 600 and not response.errors and small.prediction.confidence > 0
