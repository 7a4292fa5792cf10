"""OpenTelemetry traces: a call made under a parent span yields server spans with the right
parent, attributes and timing order (in-memory exporter, server in process); and the export
itself, over OTLP/HTTP, to a receiver on loopback (server as a subprocess, OTEL_* only)."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.request
from pathlib import Path

import pytest

trace = pytest.importorskip("opentelemetry.trace", reason="opentelemetry is in the [serve] extra")
from opentelemetry import propagate  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from mnist_serving.client import AsyncClient  # noqa: E402
from mnist_serving.server import tracing  # noqa: E402
from mnist_serving.server.app import MnistServer  # noqa: E402
from mnist_serving.server.config import ServerConfig  # noqa: E402

PHOTO = sorted((Path(__file__).parents[2] / "docs" / "examples").glob("photo-*.jpg"))[0]


@pytest.fixture
def exporter():
    spans = InMemorySpanExporter()
    assert tracing.configure({}, exporter=spans)
    try:
        yield spans
    finally:
        tracing.shutdown()  # the rest of the suite runs with tracing off


def by_name(spans, name):
    found = [s for s in spans if s.name == name]
    assert found, f"no '{name}' span among {[s.name for s in spans]}"
    return found


def test_server_spans_continue_the_callers_trace(exporter, model_repository, mnist):
    tracer = trace.get_tracer("caller")
    ports = {"port": 0, "metrics_port": -1, "http_port": 0}
    config = ServerConfig(model_repository=model_repository, host="127.0.0.1", poll_interval=0, **ports)

    async def go():
        server = MnistServer(config)
        await server.start()
        try:
            async with AsyncClient(f"127.0.0.1:{server.port}") as client:
                with tracer.start_as_current_span("caller-photo") as photo_parent:
                    answer = await client.classify(PHOTO.read_bytes())
                with tracer.start_as_current_span("caller-rest") as rest_parent:
                    headers = {"x-request-id": "rest-trace-1", "content-type": "application/json"}
                    propagate.inject(headers)
                    body = {"inputs": [{"name": "image", "shape": [1, 784], "datatype": "UINT8"}]}
                    body["inputs"][0]["data"] = mnist.x_test[0].ravel().tolist()
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{server.http_port}/v2/models/mnist/infer",
                        data=json.dumps(body).encode(),
                        headers=headers,
                    )
                    loop = asyncio.get_running_loop()
                    status = await loop.run_in_executor(None, lambda: urllib.request.urlopen(request).status)
        finally:
            await server.stop()
        return answer, status, photo_parent, rest_parent

    answer, status, photo_parent, rest_parent = asyncio.run(go())
    assert answer.label == 4 and status == 200
    spans = exporter.get_finished_spans()

    (classify,) = by_name(spans, "Classify")
    assert classify.parent.span_id == photo_parent.get_span_context().span_id
    assert classify.context.trace_id == photo_parent.get_span_context().trace_id
    assert classify.kind == trace.SpanKind.SERVER
    attributes = dict(classify.attributes)
    assert attributes["mnist_serving.model"] == "mnist" and attributes["mnist_serving.version"] == "1"
    assert attributes["mnist_serving.images"] == 1 and attributes["rpc.status"] == "OK"
    assert attributes["rpc.service"] == "mnist.v1" and attributes["mnist_serving.request_id"]

    children = {s.name: s for s in spans if s.parent and s.parent.span_id == classify.context.span_id}
    assert set(children) == {"decode", "queue", "inference"}
    decode, queue, inference = children["decode"], children["queue"], children["inference"]
    assert classify.start_time <= decode.start_time <= decode.end_time <= queue.start_time
    assert queue.end_time == inference.start_time <= inference.end_time <= classify.end_time
    (link,) = inference.links
    batch = next(s for s in by_name(spans, "batch") if s.context.span_id == link.context.span_id)
    assert classify.context.span_id in [lk.context.span_id for lk in batch.links]
    assert batch.attributes["mnist_serving.batch_images"] >= 1

    (infer,) = by_name(spans, "ModelInfer")
    assert infer.parent.span_id == rest_parent.get_span_context().span_id
    assert infer.attributes["rpc.service"] == "inference.rest"
    assert infer.attributes["mnist_serving.request_id"] == "rest-trace-1"
    assert "decode" not in [s.name for s in spans if s.parent and s.parent.span_id == infer.context.span_id]


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP endpoint on loopback: keeps each POST /v1/traces body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.got = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/v1/traces":
                    receiver.bodies.append(body)
                    receiver.got.set()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_spans_are_exported_over_otlp_http(start_server, mnist):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
        "OTEL_SERVICE_NAME": "mnist-serving-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    server = start_server(env=env)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        body = {"inputs": [{"name": "image", "shape": [1, 784], "datatype": "UINT8"}]}
        body["inputs"][0]["data"] = mnist.x_test[0].ravel().tolist()
        request = urllib.request.Request(
            f"{server.http_url}/v2/models/mnist/infer",
            data=json.dumps(body).encode(),
            headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        assert urllib.request.urlopen(request, timeout=30).status == 200
        assert receiver.got.wait(60), server.log_text()[-2000:]
    finally:
        assert server.stop() == 0
        receiver.shutdown()
    spans, services = [], set()
    for raw in receiver.bodies:
        export = ExportTraceServiceRequest.FromString(raw)
        for resource_spans in export.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                spans.extend(scope.spans)
    assert services == {"mnist-serving-test"}
    infer = next(s for s in spans if s.name == "ModelInfer")
    assert infer.trace_id.hex() == trace_id and infer.parent_span_id.hex() == parent_id
    assert {"queue", "inference"} <= {s.name for s in spans if s.parent_span_id == infer.span_id}
