"""Typed serving errors, each carrying the gRPC status it maps to (mapped in one place)."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base: a message safe to show the caller, and its gRPC status."""

    code = grpc.StatusCode.INTERNAL


class InvalidInput(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(InvalidInput):
    """An unknown model name or version is bad input (INVALID_ARGUMENT), like any other field."""


class Overloaded(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExpired(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class StartupError(RuntimeError):
    """The server cannot start as configured (bad model, unavailable device...)."""
