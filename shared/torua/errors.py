"""One small exception hierarchy, mapped to the service error codes of the public API."""

from __future__ import annotations

__all__ = [
    "ToruaError",
    "BadRequest",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "QueryTimeout",
    "ResourceLimit",
    "Unavailable",
    "Overloaded",
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


class QueryTimeout(ToruaError):
    """A query ran past its time limit and was cancelled (408). `timeout_s` is the limit applied."""

    code = 408

    def __init__(self, description: str, *, timeout_s: float | None = None) -> None:
        super().__init__(description)
        self.timeout_s = timeout_s


class ResourceLimit(PayloadTooLarge):
    """A request that would exceed a configured limit (memory, rows, value or reply size): 413.
    `limit` is the limit in its unit, `setting` the variable that sets it."""

    def __init__(self, description: str, *, limit: int | float | None = None, setting: str | None = None) -> None:
        super().__init__(description)
        self.limit = limit
        self.setting = setting


class Unavailable(ToruaError):
    """Retryable: no replica answered in time, or a replica is not caught up yet."""

    code = 503
    # How long the caller should wait before retrying, when the server knows (milliseconds).
    retry_after_ms: int | None = None


class Overloaded(Unavailable):
    """Retryable: a bounded queue is full; retry after `retry_after_ms`."""

    def __init__(self, description: str, *, retry_after_ms: int) -> None:
        super().__init__(description)
        self.retry_after_ms = retry_after_ms


class InternalError(ToruaError):
    code = 500


class ConfigError(ToruaError):
    """A setting has a wrong value; raised at start, before anything runs."""

    code = 400


_BY_CODE: dict[int, type[ToruaError]] = {
    cls.code: cls for cls in (BadRequest, NotFound, Conflict, PayloadTooLarge, QueryTimeout, Unavailable, InternalError)
}


def error_for_code(code: int, description: str, retry_after_ms: int | None = None) -> ToruaError:
    """The exception a client raises for a service error reply (a 503 with a retry hint: Overloaded)."""
    if code == 503 and retry_after_ms is not None:
        return Overloaded(description, retry_after_ms=retry_after_ms)
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = BadRequest if 400 <= code < 500 else InternalError
    err = cls(description)
    err.code = code
    return err
