"""The Python gRPC floor: a bare grpc.aio ModelInfer server over onnxruntime.

No validation, no metrics, no batching, no admission: what plain Python gRPC costs per
call on this machine, so mnist-serve's own costs can be read against it. With
``--no-model`` it answers zeros of the right shape without running onnxruntime: what the
transport alone costs (``bench/batch_budget.py``). ``--threads`` and ``--pool`` give the two
ways a server can spread a batch of 256 over the cores, with nothing else around them: one run
on onnxruntime's threads, called from the event loop (``--threads 0``), or one-thread runs side
by side in a thread pool (``--pool 2``).

    python bench/floor_server.py MODEL.onnx --port 50060 [--processes 2] [--no-model]
        [--threads N] [--pool K]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing

import grpc
import numpy as np
import onnxruntime as ort

from mnist_serving.common.contract import IMAGE_SHAPE, INPUT, NUM_CLASSES
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc


class Floor(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: str, run_model: bool = True, threads: int = 1, pool: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if threads != 1:  # as mnist-serve: its threads sleep between runs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.run_model = run_model
        self.pool = concurrent.futures.ThreadPoolExecutor(pool) if pool else None

    async def ModelReady(self, request: v2.ModelReadyRequest, context: object) -> v2.ModelReadyResponse:
        return v2.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request: v2.ModelInferRequest, context: object) -> v2.ModelInferResponse:
        count = request.inputs[0].shape[0]
        images = np.frombuffer(request.raw_input_contents[0], np.uint8).reshape(count, *IMAGE_SHAPE)
        if self.run_model and self.pool is not None:
            run = self.session.run
            loop = asyncio.get_running_loop()
            probabilities, labels = await loop.run_in_executor(self.pool, run, None, {INPUT.name: images})
        elif self.run_model:
            probabilities, labels = self.session.run(None, {INPUT.name: images})
        else:
            probabilities, labels = np.zeros((count, NUM_CLASSES), np.float32), np.zeros(count, np.int64)
        response = v2.ModelInferResponse(model_name=request.model_name)
        response.outputs.add(name="probabilities", datatype="FP32", shape=[count, NUM_CLASSES])
        response.outputs.add(name="label", datatype="INT64", shape=[count])
        response.raw_output_contents.extend([probabilities.tobytes(), labels.tobytes()])
        return response


async def serve(
    model: str, port: int, reuse_port: bool, run_model: bool = True, threads: int = 1, pool: int = 0
) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(model, run_model, threads, pool), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _process(model: str, port: int, run_model: bool, threads: int, pool: int) -> None:
    asyncio.run(serve(model, port, True, run_model, threads, pool))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--no-model", action="store_true", help="answer zeros; never run onnxruntime")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime's threads (0: its default)")
    parser.add_argument(
        "--pool", type=int, default=0, help="runs in a pool of this many threads (0: on the loop)"
    )
    args = parser.parse_args()
    if args.processes == 1:
        model = not args.no_model
        asyncio.run(serve(args.model, args.port, False, model, args.threads, args.pool))
        return 0
    # Forked before any gRPC object exists, as gRPC requires; the kernel spreads connections.
    context = multiprocessing.get_context("fork")
    task = (args.model, args.port, not args.no_model, args.threads, args.pool)
    workers = [context.Process(target=_process, args=task) for _ in range(args.processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
