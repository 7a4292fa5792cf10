"""The v2 REST API on the real server: Triton's HTTP client, curl, errors, auth, metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def http(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def json_infer(images: np.ndarray, datatype: str = "UINT8") -> bytes:
    data = images.tolist() if datatype == "UINT8" else (images / 255.0).tolist()
    tensor = {"name": "image", "shape": list(images.shape), "datatype": datatype, "data": data}
    return json.dumps({"id": "curl-1", "inputs": [tensor]}).encode()


def test_tritonclient_http_works_unchanged(server, mnist, onnx_reference, tmp_path):
    images = mnist.x_test[:300]
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run(
        [
            sys.executable,
            str(HERE.parent / "tritonclient_http_check.py"),
            f"127.0.0.1:{server.http_port}",
            str(tmp_path / "images.npy"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout)
    assert facts["live"] and facts["ready"] and facts["model_ready"] and facts["int8_ready"]
    assert not facts["unknown_ready"]
    assert facts["server"]["name"] == "mnist-serving"
    assert facts["metadata"]["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    assert facts["int8_metadata"]["name"] == "mnist-int8"
    assert facts["binary_response"]["model_name"] == "mnist"
    assert facts["binary_response"]["id"] == "triton-http-1"
    assert [o["name"] for o in facts["json_outputs"]] == ["probabilities", "label"]
    assert facts["bad_shape"]["status"] == "400" and "inputs[0].shape" in facts["bad_shape"]["message"]
    out = np.load(tmp_path / "out.npz")
    reference_probabilities, reference_labels = onnx_reference
    np.testing.assert_array_equal(out["labels"], reference_labels[:300])
    np.testing.assert_allclose(out["probabilities"], reference_probabilities[:300], atol=1e-6)
    np.testing.assert_array_equal(out["json_labels"], reference_labels[:32])
    np.testing.assert_allclose(out["json_probabilities"], reference_probabilities[:32], atol=1e-6)
    assert (out["int8_labels"] == reference_labels[:32]).mean() > 0.9


def test_curl_with_json(server, mnist, onnx_reference, tmp_path):
    (tmp_path / "request.json").write_bytes(json_infer(mnist.x_test[:4]))
    url = f"{server.http_url}/v2/models/mnist/infer"
    done = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", "content-type: application/json", "-d", "@request.json", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(done.stdout)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert answer["id"] == "curl-1" and answer["model_name"] == "mnist"
    assert outputs["label"]["data"] == onnx_reference[1][:4].tolist()
    assert outputs["probabilities"]["shape"] == [4, 10]


def test_fp32_json_and_versions_path(server, mnist, onnx_reference):
    status, headers, answer = http(
        f"{server.http_url}/v2/models/mnist/versions/1/infer", json_infer(mnist.x_test[:3], "FP32")
    )
    assert status == 200, answer
    assert answer["model_version"] == "1" and headers["x-request-id"]
    labels = next(o["data"] for o in answer["outputs"] if o["name"] == "label")
    assert labels == onnx_reference[1][:3].tolist()


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v2/models/mnist/infer", b"{not json", 400, "not JSON"),
        ("/v2/models/mnist/infer", b'{"inputs": 3}', 400, "inputs: expected a list"),
        (
            "/v2/models/mnist/infer",
            b'{"inputs": [{"name": "image", "shape": [1, 28, 28], "datatype": "UINT8", "data": [1, 2]}]}',
            400,
            "inputs[0].data: 2 values; shape [1, 28, 28] needs 784",
        ),
        (
            "/v2/models/mnist/infer",
            b'{"inputs": [{"name": "image", "shape": [1, 784], "datatype": "UINT8", "data": ["a"'
            + b', "a"' * 783
            + b"]}]}",
            400,
            "inputs[0].data: expected a (nested) list of integers",
        ),
        (
            "/v2/models/mnist/infer",
            b'{"inputs": [{"name": "image", "shape": [1, 784], "datatype": "UINT8", "data": [1.5'
            + b", 2" * 783
            + b"]}]}",
            400,
            "inputs[0].data: expected a (nested) list of integers",  # never silently cut to 1
        ),
        (
            "/v2/models/mnist/infer",
            b'{"inputs": [{"name": "image", "shape": [1, 99999999999999999999], "datatype": "UINT8"}]}',
            400,
            "inputs[0].shape: expected a list of integers",
        ),
        (
            "/v2/models/mnist/infer",
            b'{"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": [0]}]}',
            400,
            "inputs[0].name: 'pixels'",
        ),
        (
            "/v2/models/mnist/infer",
            b'{"inputs": [{"name": "image", "shape": [1, 784], "datatype": "INT8", "data": [0]}]}',
            400,
            "inputs[0].datatype",
        ),
        ("/v2/models/nope/infer", json_infer(np.zeros((1, 28, 28), np.uint8)), 404, "nope"),
        ("/v2/models/mnist/versions/99/ready", None, 404, "99"),
        ("/v1/classify", b"\x89PNG\r\n\x1a\n not a png", 400, "body"),
    ],
)
def test_bad_requests_get_a_json_error_naming_the_field(server, path, body, status, words):
    got, _, answer = http(server.http_url + path, body)
    assert got == status and words in answer["error"], answer


GOOD_TENSOR = b'{"name": "image", "shape": [1, 784], "datatype": "UINT8", "data": [' + b"0," * 783 + b"0]}"


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v2/models/mnist/infer", b"[" * 100_000, "request body: not JSON"),
        (
            "/v2/models/mnist/infer",
            b'{"inputs": [' + GOOD_TENSOR + b', {"shape": [1]}' * 50_000 + b"]}",
            "inputs: ['image', '', ",  # 50,001 names: eight shown and a count, not all of them
        ),
        ("/v2/models/mnist/infer", b'{"inputs": [{"data": [' + b"9" * 5000 + b"]}]}", "not JSON"),
        ("/v2/models/mnist/infer", b'{"parameters": [], "inputs": [' + GOOD_TENSOR + b"]}", "parameters:"),
        (
            "/v2/models/mnist/infer",
            GOOD_TENSOR.replace(b'"name"', b'"parameters": "x", "name"').join([b'{"inputs": [', b"]}"]),
            "inputs[0].parameters:",
        ),
        (
            "/v2/models/mnist/infer",
            b'{"outputs": [{"name": "label", "parameters": "x"}], "inputs": [' + GOOD_TENSOR + b"]}",
            "outputs[0].parameters:",
        ),
        ("/v2/models/mnist/infer", b'{"outputs": 5, "inputs": [' + GOOD_TENSOR + b"]}", "outputs:"),
        ("/v2/models/mnist/versions/%C2%B2/infer", b'{"inputs": [' + GOOD_TENSOR + b"]}", "model_version:"),
        (
            "/v2/models/mnist/versions/" + "1" * 5000 + "/infer",
            b'{"inputs": [' + GOOD_TENSOR + b"]}",
            "model_version:",
        ),
        ("/v2/models/mnist/versions/01/infer", b'{"inputs": [' + GOOD_TENSOR + b"]}", "model_version:"),
        ("/v2/models/mnist/versions/%D9%A1/infer", b'{"inputs": [' + GOOD_TENSOR + b"]}", "model_version:"),
    ],
)
def test_client_mistakes_are_4xx_naming_the_field_never_500(server, path, body, words):
    """What a careless or hostile caller sends is its own mistake: 4xx, the field, no traceback."""
    before = server.metric("mnist_serving_requests_total", code="INTERNAL")
    got, _, answer = http(server.http_url + path, body)
    expected = 404 if words == "model_version:" else 400  # a version that is no number is not found
    assert got == expected and words in answer["error"], answer
    assert len(answer["error"]) < 1000  # capped: never the whole body back
    assert server.metric("mnist_serving_requests_total", code="INTERNAL") == before
    assert "Traceback" not in server.log_text()[-20000:]


def test_a_client_that_disconnects_mid_upload_is_cancelled_not_internal(server):
    import socket

    labels = {"api": "inference.rest", "method": "ModelInfer"}
    before = server.metric("mnist_serving_requests_total", code="CANCELLED", **labels)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
            head = "POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n"
            sock.sendall(head.encode() + b'{"inputs": [')
    internal = server.metric("mnist_serving_requests_total", code="INTERNAL", **labels)
    deadline = time.monotonic() + 30
    while server.metric("mnist_serving_requests_total", code="CANCELLED", **labels) < before + 3:
        assert time.monotonic() < deadline, "the disconnects were never counted"
        time.sleep(0.05)  # polling another process's metrics
    assert server.metric("mnist_serving_requests_total", code="INTERNAL", **labels) == internal


def test_rest_calls_pass_the_data_plane(server, mnist):
    labels = {"api": "inference.rest", "method": "ModelInfer", "code": "OK"}
    before = server.metric("mnist_serving_requests_total", **labels)
    for _ in range(3):
        assert http(f"{server.http_url}/v2/models/mnist/infer", json_infer(mnist.x_test[:1]))[0] == 200
    after = server.metric("mnist_serving_requests_total", **labels)
    assert after - before == 3


def test_the_own_classify_call_returns_what_the_model_saw(server):
    photo = (HERE.parents[1] / "docs" / "examples").glob("photo-*.jpg")
    path = sorted(photo)[0]
    status, _, answer = http(f"{server.http_url}/v1/classify?preprocessed=1", path.read_bytes())
    assert status == 200, answer
    assert answer["label"] == int(path.stem.rsplit("-", 1)[1])
    seen = np.array(answer["preprocessed"])
    assert seen.shape == (28, 28) and seen.max() > 200 and seen[0].max() == 0  # ink centred, frame black
    assert abs(sum(answer["probabilities"]) - 1) < 1e-4


def test_tokens_as_on_grpc_and_health_stays_open(start_server, mnist):
    server = start_server("--auth-token", "s3cret")
    url = f"{server.http_url}/v2/models/mnist/infer"
    status, _, answer = http(url, json_infer(mnist.x_test[:1]))
    assert status == 401 and "authorization" in answer["error"]
    status, _, answer = http(url, json_infer(mnist.x_test[:1]), {"authorization": "Bearer wrong"})
    assert status == 401 and "invalid bearer token" in answer["error"]
    status, _, _ = http(url, json_infer(mnist.x_test[:1]), {"authorization": "Bearer s3cret"})
    assert status == 200
    assert http(f"{server.http_url}/v2/health/ready")[0] == 200
    assert http(f"{server.http_url}/v2/health/live")[0] == 200


def test_a_body_over_the_limit_is_413_before_it_is_read(start_server):
    """By its Content-Length before a byte of it is read, or by counting a chunked body."""
    import http.client
    import socket

    server = start_server("--max-http-body-mb", "1")
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        head = f"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {64 * 2**20}\r\n\r\n"
        sock.sendall(head.encode())  # and nothing of the 64 MB it announces
        answer = b""
        while b"}" not in answer and (part := sock.recv(65536)):  # the head, then the JSON error
            answer += part
        answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413") and "at most 1048576" in answer, answer[:300]

    def chunks():
        for _ in range(40):  # 2.5 MB in 64 KiB chunks, no Content-Length
            yield b"[" * 65536

    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", "/v2/models/mnist/infer", body=chunks(), encode_chunked=True)
        response = connection.getresponse()
        status, text = response.status, response.read().decode()
    except (BrokenPipeError, ConnectionResetError):  # it may close before the rest is sent
        status, text = None, ""
    finally:
        connection.close()
    assert status is None or (status == 413 and "over 1048576 bytes" in text), (status, text)
    refused = server.metric("mnist_serving_requests_total", method="ModelInfer", code="INVALID_ARGUMENT")
    assert refused == 2  # both bodies refused as too large, neither read whole


def test_slow_idle_and_oversized_heads_are_closed_and_grpc_health_stays_quick(start_server):
    """200 connections that never finish their headers are closed at the head deadline (408),
    a head over 64 KiB gets 431, and gRPC health answers at once meanwhile."""
    import socket

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = start_server("--http-header-timeout", "1")
    sockets = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
            if i % 2:
                sock.sendall(b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\nx-slow: ")  # never ends
            sockets.append(sock)
        with grpc.insecure_channel(server.address) as channel:
            started = time.monotonic()
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            health_seconds = time.monotonic() - started
        assert health.status == health_pb2.HealthCheckResponse.SERVING and health_seconds < 5
        for sock in sockets:  # each is closed by the server: recv reads the 408, then the end
            answer = b""
            while part := sock.recv(4096):
                answer += part
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
            sock.sendall(b"GET /v2 HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 431")
        assert http(f"{server.http_url}/v2/health/ready")[0] == 200  # the port still serves
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


def test_idle_connections_to_the_metrics_port_are_bounded_and_dropped(server):
    """300 idle connections: the server's threads stay bounded, each connection is dropped
    after the handler's timeout, and scrapes answer again."""
    import os
    import socket

    def threads() -> int:
        return len(os.listdir(f"/proc/{server.process.pid}/task"))

    before = threads()
    sockets = [socket.create_connection(("127.0.0.1", server.metrics_port), timeout=30) for _ in range(300)]
    try:
        peak = threads()
        for sock in sockets:  # every one is closed by the server, at once or after its timeout
            assert sock.recv(1) == b""
        assert peak <= before + 70, (before, peak)
    finally:
        for sock in sockets:
            sock.close()
    assert "mnist_serving_requests_total" in server.metrics_text()


def test_a_stalled_upload_does_not_extend_the_shutdown(start_server):
    """An upload that stops sending holds its call open; SIGTERM still ends the server at the
    end of --grace (the REST port gets what is left of it, not a second grace period)."""
    import signal
    import socket

    server = start_server("--grace", "3")
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{")
        deadline = time.monotonic() + 30
        while server.metric("mnist_serving_inflight_requests") < 1:  # the upload's call is admitted
            assert time.monotonic() < deadline, "the stalled upload was never admitted"
            time.sleep(0.05)  # polling another process's metrics
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
        stopped_after = time.monotonic() - started
    assert code == 0 and "stopped" in server.log_text()
    assert stopped_after < 3 + 2  # one grace period and the exit itself; two would be over 6 s


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux's prlimit")
def test_connections_beyond_the_cap_are_refused_and_the_other_ports_unharmed(start_server):
    """Under 400 open files the HTTP port takes (400 - 256) / 2 = 72 connections; the others
    get 503 and are closed at once, and gRPC health and the metrics port keep answering."""
    import selectors
    import socket

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    limit = ("prlimit", "--nofile=400:400")
    server = start_server(prefix=limit)
    sockets = []
    try:
        sockets = [socket.create_connection(("127.0.0.1", server.http_port), timeout=30) for _ in range(150)]
        # Refusals come at once; a connection within the cap waits for its head and says nothing.
        refused = 0
        with selectors.DefaultSelector() as waiting:
            for sock in sockets:
                waiting.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + 2.0
            while waiting.get_map() and (left := deadline - time.monotonic()) > 0:
                for key, _ in waiting.select(left):
                    refused += key.fileobj.recv(64).startswith(b"HTTP/1.1 503")
                    waiting.unregister(key.fileobj)
        assert 150 - 72 - 8 <= refused <= 150 - 72, refused
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert "mnist_serving_requests_total" in server.metrics_text()
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0
