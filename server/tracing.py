"""OpenTelemetry traces, configured by the standard ``OTEL_*`` environment variables.

Off unless configured: ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``console``) or an OTLP
endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns it
on; ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` are the
SDK's own. When off, every function here returns at its first line: tracing costs nothing.

A call's span continues the caller's trace (W3C ``traceparent`` in gRPC metadata or an HTTP
header) and carries the request id; under it, ``decode`` (encoded images), ``queue`` (the
wait in the batcher) and ``inference`` (the onnxruntime run, linked to the ``batch`` span of
every run it shared).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SERVICE_NAME = "mnist-serving"
_tracer: Any = None  # an opentelemetry Tracer while tracing is on


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(environ: Mapping[str, str] = os.environ, exporter: Any = None) -> bool:
    """Turn tracing on as the environment says (or with ``exporter``, for tests); True if on."""
    global _tracer
    if exporter is None and not configured(environ):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for traces, but opentelemetry-sdk is not installed; tracing stays off")
        return False
    if exporter is None:
        kind = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
        if kind == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
        elif kind == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            if protocol != "http/protobuf":
                log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is supported", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s: not supported (otlp, console); tracing stays off", kind)
            return False
        processor = BatchSpanProcessor(exporter)
    else:
        processor = SimpleSpanProcessor(exporter)
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("mnist_serving.server")
    log.info("tracing on: %s", type(exporter).__name__)
    return True


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is buffered (at server stop); tracing is off afterwards."""
    global _tracer
    if _tracer is None:
        return
    _tracer = None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


@dataclass
class CallSpan:
    span: Any
    token: Any


def start_call(name: str, api: str, request_id: str, carrier: Mapping[str, str] | None) -> CallSpan | None:
    """The server span of one call, continuing the caller's trace, made current."""
    if _tracer is None:
        return None
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(carrier or {})
    span = _tracer.start_span(
        name,
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.service": api, "rpc.method": name, "mnist_serving.request_id": request_id},
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    return CallSpan(span, token)


def end_call(call: CallSpan | None, status: str, message: str = "") -> None:
    if call is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    if call.span.is_recording():
        call.span.set_attribute("rpc.status", status)
        if status != "OK":
            call.span.set_status(Status(StatusCode.ERROR, f"{status}: {message}"[:200]))
    call.span.end()
    try:
        context.detach(call.token)
    except ValueError:  # ended from another context (a stream the caller closed)
        pass


def annotate(**attributes: Any) -> None:
    """Attributes on the current call's span (model name, version, image count)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        for key, value in attributes.items():
            span.set_attribute(f"mnist_serving.{key}", value)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A child span of the current call (``decode``)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


@dataclass
class RunTrace:
    """A traced call's times in the batcher, for its ``queue`` and ``inference`` spans, made
    after the fact: a call cut into chunks spans its first run to its last."""

    caller: Any  # the call's span context, which the batch span links to
    enqueued_ns: int
    started_ns: int = 0
    ended_ns: int = 0
    images: int = 0  # the largest run it was part of
    batch: Any = None  # the batch span's context

    def emit(self) -> None:
        if _tracer is None or not self.started_ns:
            return
        from opentelemetry import trace

        queue = _tracer.start_span("queue", start_time=self.enqueued_ns)
        queue.end(end_time=self.started_ns)
        links = [trace.Link(self.batch)] if self.batch is not None else []
        attributes = {"mnist_serving.batch_images": self.images}
        inference = _tracer.start_span(
            "inference", start_time=self.started_ns, links=links, attributes=attributes
        )
        inference.end(end_time=self.ended_ns)


def run_trace() -> RunTrace | None:
    """A RunTrace for the current call: None when tracing is off or the call is not sampled
    (then the batcher records nothing for it)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return RunTrace(context, time.time_ns())


def batch_ran(traces: list[RunTrace], images: int, start_ns: int, end_ns: int) -> None:
    """One onnxruntime run as a span of its own, linked to every traced call it served."""
    if _tracer is None:
        return
    from opentelemetry import trace

    links = [trace.Link(t.caller) for t in traces]
    span = _tracer.start_span(
        "batch",
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        links=links,
        start_time=start_ns,
        attributes={"mnist_serving.batch_images": images, "mnist_serving.calls": len(links)},
    )
    span.end(end_time=end_ns)
    context = span.get_span_context()
    for run in traces:
        run.started_ns = run.started_ns or start_ns
        run.ended_ns, run.images, run.batch = end_ns, max(run.images, images), context
