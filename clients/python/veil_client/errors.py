"""Errors of the Veil client: one class per kind, each carrying the API's stable code."""

from __future__ import annotations

import enum
from typing import Optional


class ErrorCode(str, enum.Enum):
    """The API's stable error codes (``Error.code`` in ``openapi.json``)."""

    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    CONFLICT = "conflict"
    NOT_READY = "not_ready"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BUSY = "busy"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    REQUEST_TIMEOUT = "request_timeout"


class VeilError(Exception):
    """Base class of everything this package raises."""


class ApiError(VeilError):
    """The server answered with an error. ``code`` is the stable code, ``message`` is for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        try:
            self.code: "ErrorCode | str" = ErrorCode(code)
        except ValueError:
            self.code = code  # a code newer than this client: kept as text
        self.message = message


class Unauthenticated(ApiError):
    """Missing, unknown or revoked token."""


class Forbidden(ApiError):
    """The caller's role may not do this."""


class NotFound(ApiError):
    """No such object — or one the caller may not see (the API does not tell them apart)."""


class BadRequest(ApiError):
    """The request was malformed or invalid; nothing changed. The message says what to fix."""


class Conflict(ApiError):
    """The object is not in a state that allows this (a job already decided, a name taken)."""


class NotReady(ApiError):
    """The object exists but is not ready (a job's result before its release)."""


class Busy(ApiError):
    """The server is at a limit (too many requests, open jobs or evaluations); retry later."""


_BY_CODE = {
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.NOT_READY: NotReady,
    ErrorCode.BUSY: Busy,
}


def api_error(status: int, code: str, message: str) -> ApiError:
    """The error class for ``code`` (``ApiError`` itself for codes without their own class)."""
    try:
        cls = _BY_CODE.get(ErrorCode(code), ApiError)
    except ValueError:
        cls = ApiError
    return cls(status, code, message)


class VersionMismatch(VeilError):
    """The server speaks another API version than this client."""

    def __init__(self, server: str, client: str):
        super().__init__(
            f"the server speaks API {server}, this client speaks {client}: install the client "
            f"that matches the server (pip install veil-client for API {server}) or ask the "
            "operator which version they run"
        )
        self.server = server
        self.client = client


class VerificationError(VeilError):
    """A signature, proof, receipt or export does not verify; ``entry`` names the first bad entry."""

    def __init__(self, reason: str, entry: Optional[int] = None):
        super().__init__(reason if entry is None else f"entry {entry}: {reason}")
        self.reason = reason
        self.entry = entry


class JobTimeout(VeilError):
    """A job did not settle within the time ``Client.wait`` was given."""
