"""Errors the service raises; the API turns each into its documented response."""

from __future__ import annotations


class ServiceError(Exception):
    """Base: a request could not be carried out; `details` says exactly why."""

    def __init__(self, message: str = "", details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidInput(ServiceError):
    """The client sent something malformed (400)."""

    def __init__(self, kind: str, details: list[dict] | None = None) -> None:
        # kind: "id", "name", "payload", "alias" -- the API picks the message.
        super().__init__(kind, details)
        self.kind = kind


class NotFound(ServiceError):
    """The container or the snapshot does not exist (404)."""


class PathNotFound(NotFound):
    """A path a client named is not in the snapshot (or the container)."""


class Conflict(ServiceError):
    """The container is in use or cannot be changed now (409)."""


class InsufficientStorage(ServiceError):
    """The pool has no room (507)."""


class OperationFailed(ServiceError):
    """The filesystem work failed for a reason that is not the client's (500)."""
