"""Torua: a distributed GraphRAG store. `from torua import Client`."""

from torua.client import Client
from torua.errors import (
    BadRequest,
    Conflict,
    InternalError,
    NotFound,
    PayloadTooLarge,
    ToruaError,
    Unavailable,
)
from torua.version import __version__

__all__ = [
    "Client",
    "ToruaError",
    "BadRequest",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "Unavailable",
    "InternalError",
    "__version__",
]
