"""Typed serving errors, free of any transport: the data plane's table maps each to a status."""

from __future__ import annotations


class ServingError(Exception):
    """Base: a message safe to show the caller."""


class InvalidInput(ServingError):
    """The request (or one item of it) breaks the wire format or the model contract."""


class ModelNotFound(ServingError):
    """An unknown model name or version (NOT_FOUND, as KServe and gRPC's guide use it)."""


class Unauthenticated(ServingError):
    """A bearer token is required and missing or wrong."""


class Overloaded(ServingError):
    """The queue is full; the caller should back off and retry."""


class NotReady(ServingError):
    """No model loaded yet, or the server is draining: retry elsewhere or later."""


class DeadlineExpired(ServingError):
    """The caller's deadline passed before the work was done."""


class StartupError(RuntimeError):
    """The server cannot start as configured (bad model, unavailable device...)."""
