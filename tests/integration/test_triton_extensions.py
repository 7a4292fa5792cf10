"""Triton's extensions through Triton's own clients (gRPC and HTTP, unchanged), on real server
processes: repository index, model config, statistics, the stream, and the three model-control
modes. tritonclient runs in a subprocess (its `inference.*` protobuf names clash with ours)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

HERE = Path(__file__).resolve().parents[1]


def triton_check(scenario: str, server, *extra: str) -> dict:  # noqa: ANN001
    done = subprocess.run(
        [sys.executable, str(HERE / "tritonclient_extensions_check.py"), scenario, server.address]
        + [server.http_url.removeprefix("http://"), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def moved(after: dict, before: dict) -> dict:
    return {key: after[key] - before[key] for key in after if isinstance(after[key], int)}


@pytest.fixture
def repository_with_broken(model_repository: Path, tmp_path: Path) -> Path:
    """The fixture's models and 'broken', whose model file is not the bytes its sidecar names."""
    repository = tmp_path / "repository"
    shutil.copytree(model_repository, repository)
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    shutil.copy(repository / "mnist" / "1" / "model.json", broken / "model.json")
    (broken / "model.onnx").write_bytes(b"\x08\x07 not an onnx model")
    return repository


def test_config_statistics_index_and_stream_in_poll_mode(start_server, onnx_reference):
    server = start_server(
        "--max-request-images", "4096", "--max-batch-size", "128", "--max-batch-delay", "250"
    )
    facts = triton_check("surface", server)
    assert {"model_repository", "model_configuration", "statistics"} <= set(facts["extensions"])
    # The index, both ways.
    assert facts["grpc_index"] == [
        {"name": "mnist", "version": "1", "state": "READY"},
        {"name": "mnist-int8", "version": "1", "state": "READY"},
    ]
    assert [(m["name"], m["state"]) for m in facts["http_index"]] == [
        ("mnist", "READY"),
        ("mnist-int8", "READY"),
    ]
    # The config comes from the contract and the flags.
    config = facts["http_config"]
    assert config["name"] == "mnist" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4096
    assert config["input"][0]["name"] == "image" and config["input"][0]["data_type"] == "TYPE_UINT8"
    assert config["input"][0]["dims"] == [28, 28]
    assert {o["name"]: o["dims"] for o in config["output"]} == {"probabilities": [10], "label": [1]}
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [128] and batching["max_queue_delay_microseconds"] == 250
    assert batching["default_queue_policy"]["max_queue_size"] == 1024
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["parameters"]["execution_provider"] == {"string_value": "CPUExecutionProvider"}
    assert facts["grpc_config"]["dynamic_batching"]["preferred_batch_size"] == [128]
    assert facts["http_config_int8"]["name"] == "mnist-int8"
    # Statistics move by exactly the calls made: 5 over gRPC, then 2 over HTTP, each of 3 images.
    grpc_moved = moved(facts["stats_after_grpc"], facts["stats_before"])
    assert grpc_moved["success"] == 5 and grpc_moved["inference_count"] == 15
    assert grpc_moved["execution_count"] == 5 and grpc_moved["batch_3_runs"] == 5
    assert grpc_moved["queue"] == grpc_moved["compute_infer"] == grpc_moved["compute_output"] == 5
    assert grpc_moved["fail"] == 0 and grpc_moved["infer_ns"] > 0 and grpc_moved["queue_ns"] > 0
    http_moved = moved(facts["stats_after_http"], facts["stats_after_grpc"])
    assert http_moved["success"] == 2 and http_moved["inference_count"] == 6
    assert facts["stats_after_http"]["last_inference"] >= facts["stats_after_grpc"]["last_inference"] > 0
    assert set(facts["stats_all"]) == {"mnist", "mnist-int8"}
    # 100 requests on one stream, a bad one in the middle: 99 answers in order plus one error.
    answers = facts["stream"]["answers"]
    assert len(answers) == 100
    assert [a.get("id") for a in answers] == [f"r{i}" if i != 50 else None for i in range(100)]
    assert "inputs[0].shape" in answers[50]["error"] and "INVALID_ARGUMENT" in answers[50]["error"]
    assert all(a["labels"] == facts["labels"] for i, a in enumerate(answers) if i != 50)
    assert facts["stream"]["after"] == "after"  # the stream stayed open
    stream_moved = moved(facts["stats_after_stream"], facts["stats_after_http"])
    assert stream_moved["success"] == 1 + 99 + 1  # the labels call, 99 answers, the one after
    # Poll mode refuses model control, naming the mode.
    for key in ("grpc_load", "grpc_unload"):
        assert facts[key]["status"] == "StatusCode.FAILED_PRECONDITION", facts[key]
        assert "--model-control-mode poll" in facts[key]["message"]
    assert facts["http_load"]["status"] == facts["http_unload"]["status"] == "409"
    # What has no meaning here says what there is instead.
    for key in ("grpc_shm", "grpc_cuda_shm"):
        assert (
            facts[key]["status"] == "StatusCode.UNIMPLEMENTED"
            and "raw_input_contents" in facts[key]["message"]
        )
    assert "OTEL_" in facts["grpc_trace"]["message"] and "--log-level" in facts["grpc_log"]["message"]
    assert facts["http_shm"]["status"] == "501"
    assert facts["unknown_config"]["status"] == "StatusCode.NOT_FOUND"
    assert facts["unknown_stats"]["status"] == "404"


def test_explicit_mode_loads_serves_and_unloads_under_load(start_server, repository_with_broken):
    server = start_server(
        "--model-control-mode",
        "explicit",
        "--max-batch-delay",
        "20000",
        repository=repository_with_broken,
        wait=False,
    )
    facts = triton_check("explicit", server)
    assert facts["ready_at_start"] is False
    assert {m["name"]: m["state"] for m in facts["index_at_start"]} == {
        "broken": "UNAVAILABLE",
        "mnist": "UNAVAILABLE",
        "mnist-int8": "UNAVAILABLE",
    }
    assert facts["load_missing"]["status"] == "StatusCode.NOT_FOUND"
    assert facts["load_broken"]["status"] == "StatusCode.FAILED_PRECONDITION"
    assert "failed to load 'broken'" in facts["load_broken"]["message"]
    assert "SHA-256" in facts["load_broken"]["message"]
    assert facts["ready_after_failed_loads"] is False
    assert facts["ready_after_load"] is True
    assert facts["load_broken_while_serving"]["status"] == "409"
    assert facts["serves_after_failed_load"] == facts["labels"]
    # Unload under load: not one call failed; calls that raced the unload were answered or
    # refused as not served, never cut off.
    assert facts["outcomes_before_unload"].count(None) >= 40
    assert set(facts["outcomes_before_unload"]) == {None}
    assert set(facts["outcomes_during_unload"]) <= {None, "StatusCode.NOT_FOUND"}
    assert set(facts["outcomes_after_unload"]) <= {None, "StatusCode.NOT_FOUND"}
    assert facts["ready_after_unload"] is False and facts["model_ready_after_unload"] is False
    refused = facts["infer_after_unload"]
    assert refused["status"] == "StatusCode.NOT_FOUND" and "unloaded" in refused["message"]
    index = {m["name"]: m for m in facts["index_after_unload"]}
    assert index["mnist"]["state"] == "UNAVAILABLE" and "unloaded" in index["mnist"]["reason"]
    assert facts["http_ready_with_int8"] is True and len(facts["int8_labels"]) == 3
    assert facts["http_ready_after_unload"] is False
    log = server.log_text()
    assert "unloaded model mnist version 1" in log and "Traceback" not in log


def test_explicit_mode_loads_named_models_at_start(start_server):
    server = start_server("--model-control-mode", "explicit", "--load-model", "mnist-int8")
    facts = triton_check("none", server)  # index and a refused... load is allowed here
    index = {m["name"]: m["state"] for m in facts["index"]}
    assert index == {"mnist": "UNAVAILABLE", "mnist-int8": "READY"}
    assert facts["grpc_load"] is None  # explicit mode loads 'mnist' on request
    assert facts["http_unload"] is None


def test_none_mode_loads_everything_at_start_and_never_changes(start_server):
    server = start_server("--model-control-mode", "none")
    facts = triton_check("none", server)
    assert {m["name"]: m["state"] for m in facts["index"]} == {"mnist": "READY", "mnist-int8": "READY"}
    assert facts["grpc_load"]["status"] == "StatusCode.FAILED_PRECONDITION"
    assert "--model-control-mode none" in facts["grpc_load"]["message"]
    assert facts["http_unload"]["status"] == "409"
    assert len(facts["labels"]) == 3
    assert "model control mode none" in server.log_text()


def test_load_and_unload_need_a_control_token(start_server, tmp_path):
    tokens = tmp_path / "control-tokens"
    tokens.write_text("# who may load and unload\ncontrol-secret\n")
    server = start_server(
        "--model-control-mode",
        "explicit",
        "--load-model",
        "mnist",
        "--auth-token",
        "inference-secret",
        "--control-token-file",
        str(tokens),
    )
    facts = triton_check("tokens", server, "control-secret", "inference-secret")
    assert facts["load_without_token"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert facts["load_with_inference_token"]["status"] == "StatusCode.PERMISSION_DENIED"
    assert "--control-token-file" in facts["load_with_inference_token"]["message"]
    assert facts["http_load_with_inference_token"]["status"] == "403"
    assert facts["load_with_control_token"] is None
    assert facts["infer_with_inference_token"] is None and facts["infer_with_control_token"] is None
    assert facts["http_unload_with_inference_token"]["status"] == "403"
    assert facts["http_unload_with_control_token"] is None
    assert facts["stream_without_token"] == "StatusCode.UNAUTHENTICATED"


def test_a_server_with_tokens_and_no_control_tokens_refuses_model_control(start_server):
    server = start_server("--model-control-mode", "explicit", "--load-model", "mnist", "--auth-token", "t")
    facts = triton_check("tokens", server, "t", "t")
    assert facts["load_with_control_token"]["status"] == "StatusCode.PERMISSION_DENIED"
    assert "needs --control-token-file" in facts["load_with_control_token"]["message"]
    assert facts["infer_with_inference_token"] is None


def test_explicit_mode_refuses_several_workers_and_unknown_models_at_start(start_server, model_repository):
    for flags, expected in (
        (("--workers", "2"), "not with --workers"),
        (("--load-model", "nope"), "--load-model nope: no servable version"),
    ):
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "mnist-serve"),
                "--model-repository",
                str(model_repository),
                "--model-control-mode",
                "explicit",
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--http-port",
                "-1",
                *flags,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert expected in done.stderr
        assert "Traceback" not in done.stderr


def test_reflection_describes_tritons_methods(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.GRPCInferenceService"
        )
        (answer,) = list(stub.ServerReflectionInfo(iter([request])))
    from google.protobuf import descriptor_pb2

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in answer.file_descriptor_response.file_descriptor_proto
    ]
    methods = {m.name for f in files for s in f.service for m in s.method}
    assert {
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    } <= methods
    assert any(f.name == "inference/model_config.proto" for f in files)
