"""One small exception hierarchy, mapped to the service error codes of the public API."""

from __future__ import annotations

__all__ = [
    "ToruaError",
    "BadRequest",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "Unavailable",
    "InternalError",
    "ConfigError",
    "error_for_code",
]


class ToruaError(Exception):
    """Base of every error Torua raises; `code` is the HTTP-like service error code."""

    code: int = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class BadRequest(ToruaError):
    code = 400


class NotFound(ToruaError):
    code = 404


class Conflict(ToruaError):
    code = 409


class PayloadTooLarge(ToruaError):
    code = 413


class Unavailable(ToruaError):
    """Retryable: no replica answered in time, or a replica is not caught up yet."""

    code = 503


class InternalError(ToruaError):
    code = 500


class ConfigError(ToruaError):
    """A setting has a wrong value; raised at start, before anything runs."""

    code = 400


_BY_CODE: dict[int, type[ToruaError]] = {
    cls.code: cls for cls in (BadRequest, NotFound, Conflict, PayloadTooLarge, Unavailable, InternalError)
}


def error_for_code(code: int, description: str) -> ToruaError:
    """The exception a client raises for a service error reply."""
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = BadRequest if 400 <= code < 500 else InternalError
    err = cls(description)
    err.code = code
    return err
