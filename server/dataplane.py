"""The data plane: everything a request goes through, whatever transport carried it.

Readiness, admission (ready / draining), the bearer-token decision, per-request metrics and
logs, draining, and the pipeline get model → decode → infer. Transports enter it through
``DataPlane.call`` (``calls.CallScope``) and convert their messages with the codec.

A call's context (its id and deadline) lives in a context variable set by ``begin``, so
the pipeline reads the deadline without every front end passing it through.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mnist_serving.common.contract import (
    IMAGE_SHAPE,
    MODEL_NAME,
    NO_LABEL,
    NUM_CLASSES,
)
from mnist_serving.common.preprocess_contract import PREPROCESSING_VERSION
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.server import codec, tracing, triton_documents
from mnist_serving.server.batch_stats import RequestTimes
from mnist_serving.server.calls import CURRENT_CALL, Call, CallScope, Outcome, Status, request_id, status_of
from mnist_serving.server.codec import Item
from mnist_serving.server.config import ServerConfig
from mnist_serving.server.decode_pool import DecodePool
from mnist_serving.server.errors import (
    FailedPrecondition,
    InvalidInput,
    NotReady,
    PermissionDenied,
    ServingError,
    Unauthenticated,
)
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.model_control import ModelControl
from mnist_serving.server.models import LoadedModel, ModelStore

log = logging.getLogger(__name__)

QUIET_PERIOD = 1.0  # seconds without any call activity before a draining server closes
NOT_READY = "no model loaded yet; retry shortly"
DRAINING = "server is shutting down; retry on another replica"


@dataclass
class Classified:
    """Results of N items: rows of failed items hold NO_LABEL, zero probabilities and an error."""

    model: LoadedModel
    probabilities: np.ndarray  # float32 [N, 10]
    labels: np.ndarray  # int64 [N]
    errors: dict[int, ServingError]
    images: np.ndarray | None = None  # uint8 [N,28,28]: what the model saw (zeros where failed)
    times: RequestTimes | None = None  # where its time went (the model's statistics)

    @property
    def confidences(self) -> np.ndarray:
        count = len(self.labels)
        rows = np.clip(self.labels, 0, NUM_CLASSES - 1)
        confidences = self.probabilities[np.arange(count), rows]
        if self.errors:
            confidences = confidences.copy()
            confidences[list(self.errors)] = 0.0
        return confidences


class DataPlane:
    """Shared by every transport; one per server process."""

    def __init__(
        self,
        store: ModelStore,
        metrics: Metrics,
        tokens: Sequence[bytes] = (),
        decoder: DecodePool | None = None,
        control: ModelControl | None = None,
        control_tokens: Sequence[bytes] = (),
        max_request_images: int = ServerConfig.max_request_images,
    ) -> None:
        self.store = store
        self.decoder = decoder or DecodePool(0, pixel_budget=ServerConfig.max_request_pixels)
        self.metrics = metrics
        self.tokens = list(tokens)  # inference tokens: with none, inference is open
        self.control_tokens = list(control_tokens)  # may also load and unload models
        self.control = control
        self.max_request_images = max_request_images
        self.accepting = True
        self.inflight = 0
        self.last_activity = 0.0  # last admission, answer or refusal (time.monotonic())
        self._idle = asyncio.Event()
        self._idle.set()
        self._children: dict[tuple[str, str, str], tuple] = {}
        metrics.inflight.set_function(lambda: self.inflight)

    # --- readiness: the one source ------------------------------------------------------

    def ready(self) -> bool:
        """Takes calls: 'mnist' is loaded (in explicit model control: any model), the server is
        not draining, and encoded images can be decoded (no decode worker is failing to start)."""
        return self.accepting and self.store.ready() and self.decoder.healthy()

    # --- auth ---------------------------------------------------------------------------

    def auth_problem(self, authorization: str | None) -> str | None:
        """Why a call's ``authorization`` value is refused, or None (also None without tokens)."""
        if not self.tokens:
            return None
        candidate = _bearer(authorization)
        if isinstance(candidate, str):
            return candidate
        if not _matches(candidate, self.tokens) and not _matches(candidate, self.control_tokens):
            return "invalid bearer token"
        return None

    def control_problem(self, authorization: str | None) -> ServingError | None:
        """Why a call may not load or unload models: a server with any token needs a control token."""
        if not self.tokens and not self.control_tokens:
            return None  # no tokens at all: open, as Triton is
        if not self.control_tokens:
            return PermissionDenied("model control on a server with tokens needs --control-token-file")
        candidate = _bearer(authorization)
        if isinstance(candidate, str):
            return Unauthenticated(candidate)
        if not _matches(candidate, self.control_tokens):
            return PermissionDenied("this token may not load or unload models (not in --control-token-file)")
        return None

    def refused(self, api: str, method: str, problem: str) -> None:
        """Record a call refused before admission (no token): metrics and one log line."""
        self.metrics.auth_failures.labels(method).inc()
        self._record(api, method, Status.UNAUTHENTICATED, 0.0)
        log.info("%s/%s: UNAUTHENTICATED (%s)", api, method, problem)

    # --- the call ---------------------------------------------------------------------------

    def call(
        self,
        api: str,
        method: str,
        authorization: str | None,
        request_id: str | None = None,
        time_remaining: float | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> CallScope:
        """One call's steps, for ``async with`` (see ``CallScope``); per RPC, or per message of
        a stream."""
        return CallScope(self, api, method, authorization, request_id, time_remaining, carrier)

    # --- admission ----------------------------------------------------------------------

    def begin(
        self,
        api: str,
        method: str,
        caller_request_id: str | None = None,
        time_remaining: float | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> Call:
        """Open a call's record (never raises) and make it the current call for the pipeline;
        with tracing on, its span continues the trace in ``carrier`` (the caller's headers)."""
        rid = request_id(caller_request_id)
        now = time.monotonic()
        deadline = None if time_remaining is None else now + time_remaining
        call = Call(api, method, rid, deadline, time.perf_counter())
        if tracing.enabled():
            call.span = tracing.start_call(method, api, rid, carrier)
        CURRENT_CALL.set(call)
        return call

    def admit(self, call: Call) -> None:
        """Count the call in flight, or refuse it (NotReady) while draining."""
        self.last_activity = time.monotonic()
        if not self.accepting:
            raise NotReady(DRAINING)
        call.admitted = True
        self.inflight += 1
        self._idle.clear()

    def end(self, call: Call, exc: BaseException | None) -> Outcome:
        """Leave, record metrics, log failures; the outcome to answer with."""
        self.last_activity = time.monotonic()
        if call.admitted:
            call.admitted = False
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
        status = status_of(exc)
        if status is Status.INTERNAL:
            message = f"internal error (request id {call.request_id})"
            log.error(
                "%s/%s [%s]: internal error",
                call.api,
                call.method,
                call.request_id,
                exc_info=exc,
                extra={"fields": self._fields(call, status)},
            )
        elif status is Status.OK:
            message = ""
        else:
            message = "cancelled by the caller" if status is Status.CANCELLED else str(exc)[:1000]
            log.info(
                "%s/%s [%s] failed: %s %s",
                call.api,
                call.method,
                call.request_id,
                status.name,
                message,
                extra={"fields": self._fields(call, status)},
            )
        now = time.perf_counter()
        self._record(call.api, call.method, status, now - call.started)
        if call.requests:  # the statistics of the versions that took its classifications
            for model, times in call.requests:
                model.batcher.stats.request(status is Status.OK, times, now)
        if call.span is not None:
            tracing.end_call(call.span, status.name, message)
            call.span = None
        return Outcome(status, message)

    @staticmethod
    def _fields(call: Call, status: Status) -> dict:
        return {"api": call.api, "method": call.method, "request_id": call.request_id, "code": status.name}

    def _record(self, api: str, method: str, status: Status, seconds: float) -> None:
        key = (api, method, status.name)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                self.metrics.requests.labels(api, method, status.name),
                self.metrics.latency.labels(api, method),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    async def drain(self, timeout: float, quiet: float = QUIET_PERIOD) -> bool:
        """Stop admitting calls; wait until admitted ones are answered. True if they all were.

        Callers that were active get time to arrive, be refused, and go elsewhere (calls
        still in the transport when it closes would be cut off); an idle server closes at once.
        """
        self.accepting = False
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        while (wait := min(self.last_activity + quiet, deadline) - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        return self.inflight == 0

    # --- the pipeline: get model → decode → infer ------------------------------------------

    def model(self, name: str, version: str = "") -> LoadedModel:
        """The loaded model for a request's name and version ('' = the served default)."""
        if not self.store.ready() and self.store.mode != "explicit":  # still loading at start
            raise NotReady(NOT_READY)
        return self.store.get(name or MODEL_NAME, version)

    # --- Triton's extensions: configuration, statistics, repository, model control ---------------

    def model_config(self, name: str, version: str = "") -> v2.ModelConfigResponse:
        config = triton_documents.model_config(self.model(name, version), self.store, self.max_request_images)
        return v2.ModelConfigResponse(config=config)

    def statistics(self, name: str = "", version: str = "") -> v2.ModelStatisticsResponse:
        """Every loaded version's statistics (no name), or one model's (and version's)."""
        if name:
            models = [self.store.get(name, version)]
        elif version:
            raise InvalidInput("a version needs a model name", "version")
        else:
            models = self.store.all()
        return v2.ModelStatisticsResponse(model_stats=[triton_documents.model_statistics(m) for m in models])

    def repository_index(self, ready_only: bool = False) -> v2.RepositoryIndexResponse:
        return triton_documents.repository_index(self.store, ready_only)

    async def load(self, name: str, parameters: Mapping[str, object], authorization: str | None) -> None:
        await self._controlling(authorization).load(name, parameters)

    async def unload(self, name: str, authorization: str | None) -> None:
        await self._controlling(authorization).unload(name)

    def _controlling(self, authorization: str | None) -> ModelControl:
        problem = self.control_problem(authorization)
        if problem is not None:
            raise problem
        if self.control is None:
            raise FailedPrecondition("this server has no model control")
        return self.control

    def metadata(self, name: str, version: str = "") -> v2.ModelMetadataResponse:
        """A model's metadata, as every transport answers it (REST as JSON)."""
        model = self.model(name, version)
        parameters = {
            "preprocessing_version": PREPROCESSING_VERSION,
            "execution_provider": model.runner.provider,
        }
        return codec.metadata_response(model.name, self.store.versions(model.name), parameters)

    async def classify(self, name: str, version: str, images: np.ndarray) -> Classified:
        """uint8 [N,28,28] → results; any failure fails the whole request."""
        model = self.model(name, version).lease()
        try:
            if tracing.enabled():
                tracing.annotate(model=model.name, version=model.version_str, images=len(images))
            call = CURRENT_CALL.get()
            times = None if call is None else call.classifying(model)
            deadline = None if call is None else call.deadline
            probabilities, labels = await model.batcher.infer(images, deadline, times)
        finally:
            model.release()
        return Classified(model, probabilities, labels, {}, images, times)

    async def classify_items(
        self,
        name: str,
        version: str,
        items: Sequence[Item],
        field: Callable[[int], str] = lambda index: f"images[{index}]",
    ) -> Classified:
        """Each item decoded on its own: a bad one becomes an error entry, the rest are classified.

        ``field(index)`` names an item in error messages, as its front end's request does.
        """
        model = self.model(name, version).lease()
        try:
            return await self._classify_items(model, items, field)
        finally:
            model.release()

    async def _classify_items(
        self, model: LoadedModel, items: Sequence[Item], field: Callable[[int], str]
    ) -> Classified:
        count = len(items)
        if tracing.enabled():
            tracing.annotate(model=model.name, version=model.version_str, images=count)
        call = CURRENT_CALL.get()
        times = None if call is None else call.classifying(model)
        errors: dict[int, ServingError] = {}
        decoded: dict[int, np.ndarray] = {}
        encoded = [index for index, item in enumerate(items) if isinstance(item, bytes)]
        if encoded:  # off the event loop, in the decode pool
            begun = time.perf_counter()
            with tracing.span("decode", images=len(encoded)):
                values = await self.decoder.decode(
                    [items[i] for i in encoded], [f"{field(i)}.encoded" for i in encoded], self._deadline()
                )
            if times is not None:
                times.input += time.perf_counter() - begun
            for index, value in zip(encoded, values, strict=True):
                if isinstance(value, InvalidInput):
                    errors[index] = value
                else:
                    decoded[index] = value
        for index, item in enumerate(items):
            if isinstance(item, InvalidInput):
                errors[index] = item
            elif isinstance(item, np.ndarray):
                decoded[index] = item.reshape(IMAGE_SHAPE)
        probabilities = np.zeros((count, NUM_CLASSES), dtype=np.float32)
        labels = np.full(count, NO_LABEL, dtype=np.int64)
        images = np.zeros((count, *IMAGE_SHAPE), dtype=np.uint8)
        if decoded:
            good = sorted(decoded)
            images[good] = np.stack([decoded[i] for i in good])
            found, found_labels = await model.batcher.infer(images[good], self._deadline(), times)
            probabilities[good] = found
            labels[good] = found_labels
        return Classified(model, probabilities, labels, errors, images, times)

    @staticmethod
    def _deadline() -> float | None:
        call = CURRENT_CALL.get()
        return None if call is None else call.deadline


def _bearer(authorization: str | None) -> bytes | str:
    """The token of an ``authorization`` value, or (text) why it is not one."""
    if not authorization:
        return "missing authorization metadata; expected 'authorization: Bearer <token>'"
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "authorization metadata must be 'Bearer <token>'"
    return token.strip().encode()


def _matches(candidate: bytes, tokens: Sequence[bytes]) -> bool:
    return any(hmac.compare_digest(candidate, t) for t in tokens)
