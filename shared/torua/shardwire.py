"""The part of the router–shard protocol (`torua_node.shard.protocol`) that clients speak too: point
reads of one entity or one key, sent straight to the owning shard's queue group
(`torua.shard.<n>.get`, `torua.shard.<n>.kv_get`) by the Python client, and by routers.

Defined here, once, so the client (which cannot import the node's packages) and the shards agree on
the wire format; `torua_node.shard.protocol` re-exports every name. Placement of keys (`kv_shard`)
lives here for the same reason: the client must place a key exactly as the router writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from msgspec import Meta

from torua.hashing import shard_for
from torua.model import Consistency, EntityOut
from torua.wire import Reply, Request

__all__ = [
    "ShardRequest",
    "ShardGet",
    "ShardKVGet",
    "EntityReply",
    "KVValueReply",
    "Op",
    "GET",
    "KV_GET",
    "PAGED_HEADER",
    "kv_shard",
]


class ShardRequest(Request):
    after: Annotated[int, Meta(ge=0)] = 0
    # "strong": the replica first learns the end of its shard's log and waits to apply that far.
    consistency: Consistency = "strong"
    # The identity of the log `after` was read from (a router's read point): a replica that applied
    # another log (the stream was re-created) must not answer from it.
    log_id: int | None = None


class ShardGet(ShardRequest, kw_only=True):
    id: str
    embedding: bool = False


class ShardKVGet(ShardRequest, kw_only=True):
    key: str


class EntityReply(Reply):
    entity: EntityOut
    applied_seq: int


class KVValueReply(Reply):
    key: str
    value: str
    applied_seq: int


Q = TypeVar("Q", bound=ShardRequest)
R = TypeVar("R", bound=Reply)


@dataclass(frozen=True, slots=True)
class Op(Generic[Q, R]):
    """One shard operation: `torua.shard.<n>.<name>`, taking `request`, answering `reply`."""

    name: str
    request: type[Q]
    reply: type[R]
    description: str


GET = Op("get", ShardGet, EntityReply, "One entity by id")
KV_GET = Op("kv_get", ShardKVGet, KVValueReply, "One key's value")

# A reply larger than one NATS message is sent in parts: the first answers the request, with this
# header set to "<cursor> <node> <parts>" (torua_node.shard.protocol.page_subject fetches the rest).
PAGED_HEADER = "Torua-Paged"


def kv_shard(key: str, num_shards: int) -> int:
    """The shard a `torua.kv` key lives in."""
    # Prefixed so keys and graph ids that happen to be equal are placed independently.
    return shard_for(f"kv:{key}", num_shards)
