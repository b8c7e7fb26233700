"""Torua: a distributed GraphRAG store. `from torua import Client`."""

from torua.client import Client
from torua.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    InternalError,
    NotFound,
    PayloadTooLarge,
    ToruaError,
    Unavailable,
)
from torua.model import Chunk, Document, Entity, Relation
from torua.sync import SyncClient
from torua.version import __version__

__all__ = [
    "Client",
    "SyncClient",
    "Document",
    "Chunk",
    "Entity",
    "Relation",
    "ToruaError",
    "BadRequest",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "Unavailable",
    "InternalError",
    "ConfigError",
    "__version__",
]
