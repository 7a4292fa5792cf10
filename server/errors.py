"""Typed serving errors, free of any transport: the data plane's table maps each to a status."""

from __future__ import annotations


class ServingError(Exception):
    """Base: a message safe to show the caller."""

    http_status: int | None = None  # where HTTP has a status of its own for it (else the table's)


class InvalidInput(ServingError):
    """The request (or one item of it) breaks the wire format or the model contract.

    ``field`` is the path of what is wrong (``inputs[0].shape``), in the words of the
    request the caller sent: each codec names its own transport's fields.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class BodyTooLarge(InvalidInput):
    """A REST body over --max-http-body-mb: 413, refused before it is read whole."""

    http_status = 413


class ModelNotFound(ServingError):
    """An unknown model name or version (NOT_FOUND, as KServe and gRPC's guide use it)."""


class Unauthenticated(ServingError):
    """A bearer token is required and missing or wrong."""


class Overloaded(ServingError):
    """The queue is full; the caller should back off and retry."""


class NotReady(ServingError):
    """No model loaded yet, or the server is draining: retry elsewhere or later."""


class PermissionDenied(ServingError):
    """A valid token that may not do this (an inference token asking to unload a model)."""


class FailedPrecondition(ServingError):
    """The server is not in a state for this: model control in the wrong mode, a model
    version that cannot be served."""


class Unimplemented(ServingError):
    """A method of the protocol this server has no meaning for; the message says what it has."""


class CallerGone(ServingError):
    """The caller went away before the call was answered (a REST client that disconnected)."""


class DeadlineExpired(ServingError):
    """The caller's deadline passed before the work was done."""


class StartupError(RuntimeError):
    """The server cannot start as configured (bad model, unavailable device...)."""
