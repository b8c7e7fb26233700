"""The part of the router–shard protocol (`torua_node.shard.protocol`) that clients speak too: point
reads of one entity or one key, sent straight to the owning shard's queue group
(`torua.shard.<n>.get`, `torua.shard.<n>.kv_get`) by the Python client, and by routers; and the
vector search of one shard (`torua.shard.<n>.vector`), which the Python client sends to every shard
and merges (`merge_hits`) as a router does.

Defined here, once, so the client (which cannot import the node's packages) and the shards agree on
the wire format; `torua_node.shard.protocol` re-exports every name. Placement of keys (`kv_shard`)
lives here for the same reason: the client must place a key exactly as the router writes it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

import msgspec
from msgspec import Meta

from torua.hashing import shard_for
from torua.model import Consistency, EntityOut, Hit, Target
from torua.wire import Reply, Request

__all__ = [
    "ShardRequest",
    "ShardGet",
    "ShardKVGet",
    "ShardVector",
    "HostedVector",
    "HostedHits",
    "EntityReply",
    "KVValueReply",
    "HitsReply",
    "Op",
    "GET",
    "KV_GET",
    "VECTOR",
    "PAGED_HEADER",
    "MAX_SHARD_K",
    "kv_shard",
    "merge_hits",
]

# The deepest list one shard is asked for: a public request's k (at most 1000), or hybrid search's
# depth of three times that.
MAX_SHARD_K = 3000


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


class ShardVector(ShardRequest, kw_only=True):
    vector: list[float]
    k: Annotated[int, Meta(ge=1, le=MAX_SHARD_K)]
    target: Target = "chunks"


class HostedVector(Request, kw_only=True):
    """`torua.shard.all.vector` (subjects.SHARD_VECTOR_ALL): `ShardVector` for every shard in
    `shards` at once, each with its own write token in `after` (as a public request's); every node
    answers for the shards it serves."""

    vector: list[float]
    k: Annotated[int, Meta(ge=1, le=MAX_SHARD_K)]
    target: Target = "chunks"
    shards: list[int]
    after: dict[str, int] = msgspec.field(default_factory=dict)
    consistency: Consistency = "strong"
    # Strong only: the nodes serving this shard learn the end of every asked shard's log (one look)
    # and send it (`HostedHits.ends`); the others search at once and send each replica's log
    # (`HostedHits.log_ids`), for the asker to check their answers against those ends. None: every
    # node learns the ends for the shards it serves and waits for them itself.
    ends_from: int | None = None


class EntityReply(Reply):
    entity: EntityOut
    applied_seq: int


class KVValueReply(Reply):
    key: str
    value: str
    applied_seq: int


class HitsReply(Reply):
    # (id, score), best first; equal scores ordered by id.
    hits: list[tuple[str, float]]
    applied_seq: int


class HostedHits(Reply):
    """One node's answer to `HostedVector`: a shard's `HitsReply` for each asked shard it serves and
    could answer now (one it could not is left out, for its queue group to answer)."""

    shards: dict[int, HitsReply]
    # Shards this node serves that were not asked: a client whose shard count is out of date (the
    # cluster was created again with more shards) learns so here, instead of missing them.
    unasked: list[int] = msgspec.field(default_factory=list)
    # From a node serving `ends_from`: the look at the log, begun after the request arrived (its
    # identity, and every asked shard's end); this node's own shards are as strong as it asks.
    log_id: int | None = None
    ends: dict[int, int] | None = None
    # From the other nodes, searched at once: the log each answering replica follows (a shard whose
    # replica's log is not known is left out of `shards`).
    log_ids: dict[int, int] = msgspec.field(default_factory=dict)


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
VECTOR = Op("vector", ShardVector, HitsReply, "Exact top-k by cosine")

# A reply larger than one NATS message is sent in parts: the first answers the request, with this
# header set to "<cursor> <node> <parts>" (torua_node.shard.protocol.page_subject fetches the rest).
PAGED_HEADER = "Torua-Paged"


def kv_shard(key: str, num_shards: int) -> int:
    """The shard a `torua.kv` key lives in."""
    # Prefixed so keys and graph ids that happen to be equal are placed independently.
    return shard_for(f"kv:{key}", num_shards)


def merge_hits(replies: Mapping[int, HitsReply], k: int) -> list[Hit]:
    """The global top `k` of shards' answers: best first, equal scores ordered by id (then shard),
    so the answer never depends on the number of shards. Plain tuples compared natively, only the
    `k` kept become `Hit`s."""
    ranked = ((-score, id_, shard) for shard, rep in replies.items() for id_, score in rep.hits)
    return [Hit(id=id_, score=-neg, shard=shard) for neg, id_, shard in heapq.nsmallest(k, ranked)]
