"""What a call is and how it ends, whatever transport carried it: its record, the one table
from error type to status, and ``CallScope``, the construct every transport runs a call in
(``async with dataplane.call(...)``)."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_serving.server import tracing
from mnist_serving.server.batch_stats import RequestTimes
from mnist_serving.server.errors import (
    CallerGone,
    DeadlineExpired,
    FailedPrecondition,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    ServingError,
    Unauthenticated,
    Unimplemented,
)

if TYPE_CHECKING:
    from mnist_serving.server.dataplane import DataPlane
    from mnist_serving.server.models import LoadedModel

REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 128
# Generated ids: a random per-process prefix and a counter (unique, and cheap on the hot path).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def request_id(caller_value: str | None) -> str:
    """The caller's id (printable, at most 128 characters), or a new one."""
    rid = "".join(ch for ch in (caller_value or "")[:MAX_REQUEST_ID] if ch.isprintable())
    return rid or f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class Status(enum.Enum):
    """Outcome of a call: the gRPC status name and the HTTP status a REST front end uses."""

    OK = 200
    CANCELLED = 499
    INVALID_ARGUMENT = 400
    DEADLINE_EXCEEDED = 504
    NOT_FOUND = 404
    RESOURCE_EXHAUSTED = 429
    INTERNAL = 500
    UNAVAILABLE = 503
    UNAUTHENTICATED = 401
    PERMISSION_DENIED = 403
    FAILED_PRECONDITION = 409
    UNIMPLEMENTED = 501

    @property
    def http(self) -> int:
        return self.value


# The one table from error type to status (subclasses inherit their base's entry).
ERROR_STATUS: dict[type[BaseException], Status] = {
    InvalidInput: Status.INVALID_ARGUMENT,
    ModelNotFound: Status.NOT_FOUND,
    Unauthenticated: Status.UNAUTHENTICATED,
    Overloaded: Status.RESOURCE_EXHAUSTED,
    PermissionDenied: Status.PERMISSION_DENIED,
    FailedPrecondition: Status.FAILED_PRECONDITION,
    Unimplemented: Status.UNIMPLEMENTED,
    NotReady: Status.UNAVAILABLE,
    DeadlineExpired: Status.DEADLINE_EXCEEDED,
    CallerGone: Status.CANCELLED,
    asyncio.CancelledError: Status.CANCELLED,
    GeneratorExit: Status.CANCELLED,  # a stream the caller closed
}


def status_of(exc: BaseException | None) -> Status:
    if exc is None:
        return Status.OK
    for kind in type(exc).__mro__:
        if kind in ERROR_STATUS:
            return ERROR_STATUS[kind]
    return Status.INTERNAL


@dataclass
class Call:
    """One admitted request: what the transport needs back (its id) and what the pipeline reads."""

    api: str
    method: str
    request_id: str
    deadline: float | None  # time.monotonic() instant
    started: float  # time.perf_counter()
    admitted: bool = False
    span: tracing.CallSpan | None = None  # with tracing on
    # Each classification the call made: the version that took it, and where its time went
    # (the version's statistics count them when the call ends).
    requests: list[tuple[LoadedModel, RequestTimes]] | None = None

    def classifying(self, model: LoadedModel) -> RequestTimes:
        """Note a classification by ``model``; returns the record its steps add their times to."""
        times = RequestTimes()
        if self.requests is None:
            self.requests = []
        self.requests.append((model, times))
        return times


CURRENT_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("mnist_serving_call", default=None)


@dataclass
class Outcome:
    """How a call ended, for the transport to answer with."""

    status: Status
    message: str


class CallFailed(Exception):
    """A call that did not succeed, as its transport answers it: status, a message safe to
    show the caller, and the call's request id (None when refused before it had one)."""

    def __init__(self, status: Status, message: str, request_id: str | None, http: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.request_id = status, message, request_id
        self.http = http or status.http


class CallScope:
    """``async with dataplane.call(...) as call``: the steps every call takes, whatever its
    transport: the token, its request id and trace, admission, then, on the way out, metrics,
    logs and the status its outcome maps to. A failure leaves as ``CallFailed``; a call whose
    caller went away leaves with its cancellation, as it came."""

    __slots__ = (
        "_plane",
        "_api",
        "_method",
        "_authorization",
        "_request_id",
        "_remaining",
        "_carrier",
        "_call",
    )

    def __init__(
        self,
        plane: DataPlane,
        api: str,
        method: str,
        authorization: str | None,
        request_id: str | None,
        time_remaining: float | None,
        carrier: Mapping[str, str] | None,
    ) -> None:
        self._plane, self._api, self._method = plane, api, method
        self._authorization, self._request_id = authorization, request_id
        self._remaining, self._carrier = time_remaining, carrier
        self._call: Call | None = None

    async def __aenter__(self) -> Call:
        plane = self._plane
        problem = plane.auth_problem(self._authorization)
        if problem is not None:
            plane.refused(self._api, self._method, problem)
            raise CallFailed(Status.UNAUTHENTICATED, problem, None)
        call = self._call = plane.begin(
            self._api, self._method, self._request_id, self._remaining, self._carrier
        )
        try:
            plane.admit(call)
        except NotReady as exc:
            plane.end(call, exc)
            raise CallFailed(Status.UNAVAILABLE, str(exc), call.request_id) from None
        return call

    async def __aexit__(self, kind: type | None, exc: BaseException | None, traceback: object) -> bool:
        call = self._call
        outcome = self._plane.end(call, exc)
        if exc is None or outcome.status is Status.CANCELLED and not isinstance(exc, ServingError):
            return False  # success, or the call was cancelled: nothing to answer
        if isinstance(exc, ServingError):
            raise CallFailed(outcome.status, str(exc)[:1000], call.request_id, exc.http_status) from exc
        raise CallFailed(outcome.status, outcome.message, call.request_id) from exc


def header(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str | None:
    """The first value of ``name`` in transport metadata (headers), as text, if any."""
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None
