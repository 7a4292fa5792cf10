"""Run by the tests in its own process: Triton's own clients (gRPC and HTTP, unchanged) call
every extension a Triton user calls: repository index, model config, statistics, the
bidirectional stream, and model control.

tritonclient registers its own `inference.*` protobuf symbols, which would clash with the
server's in one process. Usage: python tritonclient_extensions_check.py SCENARIO GRPC HTTP
[CONTROL_TOKEN INFERENCE_TOKEN]; prints one JSON object of what it saw.
"""

from __future__ import annotations

import json
import queue
import sys
import threading

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

IMAGES = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)


def grpc_input(images: np.ndarray = IMAGES) -> list:
    tensor = tgrpc.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return [tensor]


def http_input(images: np.ndarray = IMAGES) -> list:
    tensor = thttp.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=True)
    return [tensor]


def error(call) -> dict | None:  # noqa: ANN001
    """None if the call succeeds, else its status and message."""
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}
    return None


def stats(client, name: str = "mnist") -> dict:  # noqa: ANN001
    """The counts of one model's statistics, read through either client."""
    if isinstance(client, tgrpc.InferenceServerClient):
        document = client.get_inference_statistics(name, as_json=True)
    else:
        document = client.get_inference_statistics(name)
    model = document["model_stats"][0]
    inference = model["inference_stats"]

    def count(entry: dict) -> int:
        return int(entry.get("count", 0))

    return {
        "success": count(inference.get("success", {})),
        "fail": count(inference.get("fail", {})),
        "queue": count(inference.get("queue", {})),
        "compute_infer": count(inference.get("compute_infer", {})),
        "compute_output": count(inference.get("compute_output", {})),
        "inference_count": int(model.get("inference_count", 0)),
        "execution_count": int(model.get("execution_count", 0)),
        "batch_3_runs": sum(
            count(b["compute_infer"]) for b in model.get("batch_stats", []) if int(b["batch_size"]) == 3
        ),
        "queue_ns": int(inference.get("queue", {}).get("ns", 0)),
        "infer_ns": int(inference.get("compute_infer", {}).get("ns", 0)),
        "last_inference": int(model.get("last_inference", 0)),
        "version": model["version"],
    }


def stream(client: tgrpc.InferenceServerClient, count: int, bad_at: int) -> dict:
    """``count`` requests on one stream, the one at ``bad_at`` with a wrong shape."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    bad = tgrpc.InferInput("image", [1, 27, 28], "UINT8")
    bad.set_data_from_numpy(np.zeros((1, 27, 28), np.uint8))
    for index in range(count):
        inputs = [bad] if index == bad_at else grpc_input()
        client.async_stream_infer("mnist", inputs, request_id=f"r{index}")
    seen = []
    for _ in range(count):
        result, failure = answers.get(timeout=60)
        if failure is not None:
            seen.append({"error": failure.message()})
        else:
            seen.append({"id": result.get_response().id, "labels": result.as_numpy("label").tolist()})
    # The stream is still open: one more request is answered on it.
    client.async_stream_infer("mnist", grpc_input(), request_id="after")
    result, failure = answers.get(timeout=60)
    client.stop_stream()
    return {"answers": seen, "after": None if failure else result.get_response().id}


def surface(grpc_address: str, http_url: str) -> dict:
    g = tgrpc.InferenceServerClient(grpc_address)
    h = thttp.InferenceServerClient(http_url)
    facts: dict = {
        "extensions": g.get_server_metadata(as_json=True)["extensions"],
        "grpc_index": g.get_model_repository_index(as_json=True)["models"],
        "http_index": h.get_model_repository_index(),
        "grpc_config": g.get_model_config("mnist", as_json=True)["config"],
        "http_config": h.get_model_config("mnist"),
        "http_config_int8": h.get_model_config("mnist-int8"),
    }
    before = stats(g)
    for _ in range(5):
        g.infer("mnist", grpc_input())
    facts["stats_before"], facts["stats_after_grpc"] = before, stats(g)
    for _ in range(2):
        h.infer("mnist", http_input())
    facts["stats_after_http"] = stats(h)
    facts["labels"] = g.infer("mnist", grpc_input()).as_numpy("label").tolist()
    facts["stream"] = stream(g, 100, 50)
    facts["stats_after_stream"] = stats(g)
    facts["stats_all"] = [m["name"] for m in h.get_inference_statistics()["model_stats"]]
    facts["grpc_load"] = error(lambda: g.load_model("mnist"))
    facts["grpc_unload"] = error(lambda: g.unload_model("mnist"))
    facts["http_load"] = error(lambda: h.load_model("mnist"))
    facts["http_unload"] = error(lambda: h.unload_model("mnist"))
    facts["grpc_shm"] = error(g.get_system_shared_memory_status)
    facts["grpc_cuda_shm"] = error(g.get_cuda_shared_memory_status)
    facts["grpc_trace"] = error(g.get_trace_settings)
    facts["grpc_log"] = error(g.get_log_settings)
    facts["http_shm"] = error(h.get_system_shared_memory_status)
    facts["unknown_config"] = error(lambda: g.get_model_config("nope"))
    facts["unknown_stats"] = error(lambda: h.get_inference_statistics("nope"))
    return facts


def hammer(grpc_address: str, stop: threading.Event, outcomes: list, answered: threading.Condition) -> None:
    client = tgrpc.InferenceServerClient(grpc_address)
    while not stop.is_set():
        failure = error(lambda: client.infer("mnist", grpc_input()))
        with answered:
            outcomes.append(None if failure is None else failure["status"])
            answered.notify_all()


def explicit(grpc_address: str, http_url: str) -> dict:
    g = tgrpc.InferenceServerClient(grpc_address)
    h = thttp.InferenceServerClient(http_url)
    facts: dict = {"ready_at_start": g.is_server_ready(), "index_at_start": h.get_model_repository_index()}
    facts["load_missing"] = error(lambda: g.load_model("nope"))
    facts["load_broken"] = error(lambda: g.load_model("broken"))
    facts["ready_after_failed_loads"] = g.is_server_ready()
    g.load_model("mnist")
    facts["ready_after_load"] = g.is_server_ready() and g.is_model_ready("mnist")
    facts["labels"] = g.infer("mnist", grpc_input()).as_numpy("label").tolist()
    facts["load_broken_while_serving"] = error(lambda: h.load_model("broken"))
    facts["serves_after_failed_load"] = g.infer("mnist", grpc_input()).as_numpy("label").tolist()
    # Unload under load: callers keep sending; the unload returns once what it took is answered.
    stop, answered, outcomes = threading.Event(), threading.Condition(), []
    callers = [
        threading.Thread(target=hammer, args=(grpc_address, stop, outcomes, answered)) for _ in range(4)
    ]
    for caller in callers:
        caller.start()
    with answered:  # the callers are under way: 40 answers so far
        answered.wait_for(lambda: outcomes.count(None) >= 40, timeout=60)
        before_unload = len(outcomes)
    g.unload_model("mnist")
    with answered:
        at_unload = len(outcomes)
    facts["ready_after_unload"] = g.is_server_ready()
    facts["model_ready_after_unload"] = g.is_model_ready("mnist")
    stop.set()
    for caller in callers:
        caller.join()
    facts["outcomes_before_unload"] = outcomes[:before_unload]
    facts["outcomes_during_unload"] = outcomes[before_unload:at_unload]
    facts["outcomes_after_unload"] = outcomes[at_unload:]
    facts["infer_after_unload"] = error(lambda: g.infer("mnist", grpc_input()))
    facts["index_after_unload"] = g.get_model_repository_index(as_json=True)["models"]
    h.load_model("mnist-int8")
    facts["http_ready_with_int8"] = h.is_server_ready() and h.is_model_ready("mnist-int8")
    facts["int8_labels"] = h.infer("mnist-int8", http_input()).as_numpy("label").tolist()
    h.unload_model("mnist-int8")
    facts["http_ready_after_unload"] = h.is_server_ready()
    return facts


def none_mode(grpc_address: str, http_url: str) -> dict:
    g = tgrpc.InferenceServerClient(grpc_address)
    h = thttp.InferenceServerClient(http_url)
    return {
        "index": g.get_model_repository_index(as_json=True)["models"],
        "labels": g.infer("mnist-int8", grpc_input()).as_numpy("label").tolist(),
        "grpc_load": error(lambda: g.load_model("mnist")),
        "http_unload": error(lambda: h.unload_model("mnist")),
    }


def tokens(grpc_address: str, http_url: str, control: str, inference: str) -> dict:
    g = tgrpc.InferenceServerClient(grpc_address)
    h = thttp.InferenceServerClient(http_url)
    as_control = {"authorization": f"Bearer {control}"}
    as_inference = {"authorization": f"Bearer {inference}"}
    return {
        "load_without_token": error(lambda: g.load_model("mnist")),
        "load_with_inference_token": error(lambda: g.load_model("mnist", headers=as_inference)),
        "http_load_with_inference_token": error(lambda: h.load_model("mnist", headers=as_inference)),
        "load_with_control_token": error(lambda: g.load_model("mnist", headers=as_control)),
        "infer_with_inference_token": error(lambda: g.infer("mnist", grpc_input(), headers=as_inference)),
        "infer_with_control_token": error(lambda: g.infer("mnist", grpc_input(), headers=as_control)),
        "http_unload_with_inference_token": error(lambda: h.unload_model("mnist", headers=as_inference)),
        "http_unload_with_control_token": error(lambda: h.unload_model("mnist", headers=as_control)),
        "stream_without_token": _stream_refused(g),
    }


def _stream_refused(client: tgrpc.InferenceServerClient) -> str | None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("mnist", grpc_input())
    except InferenceServerException:
        pass  # the stream already ended; its callback has the reason
    _, failure = answers.get(timeout=60)
    client.stop_stream()
    return None if failure is None else str(failure.status())


SCENARIOS = {"surface": surface, "explicit": explicit, "none": none_mode, "tokens": tokens}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](*sys.argv[2:])))
