"""The router–shard protocol: what a router sends to one shard (`torua.shard.<n>.<op>`) and what any
caught-up replica answers.

Internal subjects, but plain JSON like the public ones so `nats req` can debug them: field names
here are the wire format. Every request may carry `after`, the shard's write token: a replica that
has not applied that far waits briefly, then answers 503 — never stale data. Every reply carries
`applied_seq`, the position of the shard's log the answer is at least as of.

Each operation is an `Op`: its name (the last subject token), its request and its reply type, so
the router's calls and the shard's endpoints cannot disagree about either.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from torua.model import EdgeOut, EntityOut

# The point reads clients send straight to a shard are defined in the shared package, once.
from torua.shardwire import (
    GET,
    KV_GET,
    PAGED_HEADER,
    VECTOR,
    EntityReply,
    HitsReply,
    HostedHits,
    HostedVector,
    KVValueReply,
    Op,
    ShardGet,
    ShardKVGet,
    ShardRequest,
    ShardVector,
)
from torua.wire import Reply, Request
from torua_node.cypher.merge import ShardRows
from torua_node.storage.chunks import ChunkOut, Mention
from torua_node.storage.textindex import query_terms

__all__ = [
    "Direction",
    "Target",
    "ShardRequest",
    "ShardGet",
    "ShardEntities",
    "ShardEdges",
    "ShardKVGet",
    "ShardVector",
    "HostedVector",
    "HostedHits",
    "ShardTextStats",
    "ShardText",
    "ShardMentions",
    "ShardChunks",
    "ShardQuery",
    "ShardPage",
    "HitsReply",
    "TextReply",
    "TextStatsReply",
    "MentionsReply",
    "ChunksReply",
    "ShardChunkStems",
    "ChunkStemsReply",
    "QueryRowsReply",
    "EntityReply",
    "EntitiesReply",
    "EdgesReply",
    "KVValueReply",
    "Op",
    "GET",
    "ENTITIES",
    "EDGES",
    "KV_GET",
    "VECTOR",
    "TEXT_STATS",
    "TEXT",
    "MENTIONS",
    "CHUNKS",
    "CHUNK_STEMS",
    "QUERY",
    "PAGED_HEADER",
    "page_subject",
    "name_coverage",
    "NodeShards",
    "NodeShardsReply",
    "ShardError",
]

Direction = Literal["out", "in", "both"]
Target = Literal["chunks", "entities"]


def name_coverage(name: str, asked: Collection[str]) -> float | None:
    """The share of a name's words (query terms) among `asked`; None for a name without any. What
    `ShardText.graph_named` is compared with, and how retrieval tells a seed (rag/graphrank.py)."""
    words = query_terms(name)
    if not words:
        return None
    return sum(1 for t in words if t in asked) / len(words)


# --- requests -------------------------------------------------------------------------------------


class ShardEntities(ShardRequest, kw_only=True):
    ids: list[str]


class ShardEdges(ShardRequest, kw_only=True):
    ids: list[str]
    direction: Direction = "both"
    types: list[str] | None = None
    limit: int = 1000


class ShardTextStats(ShardRequest, kw_only=True):
    terms: list[str]
    target: Target = "chunks"


class ShardText(ShardRequest, kw_only=True):
    idf: dict[str, float]
    avg_length: float
    k: int
    target: Target = "chunks"
    # Target "entities" only: also the rows of this shard's best `graph_top` hits (0: all k) that the
    # query names (`TextReply.entities`) and, up to `graph_edges` of them, the relations touching
    # those, both directions (`TextReply.edges`, ordered by (source, type, target)): retrieval reads
    # the named entities' neighbourhood next, and saves a round. A hit is named when at least
    # `graph_named` of its name's words are among the query's terms (the keys of `idf`;
    # `name_coverage`); 0: every hit. `graph_edges` 0 (the default): the hits alone.
    graph_edges: Annotated[int, Meta(ge=0)] = 0
    graph_named: Annotated[float, Meta(ge=0.0)] = 0.0
    graph_top: Annotated[int, Meta(ge=0)] = 0


class ShardMentions(ShardRequest, kw_only=True):
    entity_ids: list[str]
    limit: int = 10_000


class ShardChunks(ShardRequest, kw_only=True):
    ids: list[str]


class ShardChunkStems(ShardRequest, kw_only=True):
    """Of the chunks `ids` this shard holds, how many of `stems` each one's text uses: a stem is the
    first `stem_length` letters of an indexed word (lower-cased, stop words left out) at least
    `min_length` long. Answered from the replica's text index, without reading the database."""

    ids: list[str]
    stems: list[str]
    stem_length: Annotated[int, Meta(ge=1)]
    min_length: Annotated[int, Meta(ge=0)] = 0


class ShardQuery(ShardRequest, kw_only=True):
    query: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    # Lowers the replica's TORUA_QUERY_TIMEOUT for this query (the router sends what is left of the
    # request's time); never raises it.
    timeout_ms: Annotated[int, Meta(ge=1)] | None = None


# --- replies --------------------------------------------------------------------------------------


class TextStatsReply(Reply):
    df: dict[str, int]
    n_docs: int
    total_length: int
    applied_seq: int


class TextReply(HitsReply, omit_defaults=True):
    """`HitsReply`, and what `ShardText.graph_edges` asks for: the rows of the best `graph_top` hits
    the query names and the relations touching them, at most `graph_edges` (fewer than that: all of
    them)."""

    entities: list[EntityOut] = msgspec.field(default_factory=list)
    edges: list[EdgeOut] = msgspec.field(default_factory=list)


class MentionsReply(Reply):
    mentions: list[Mention]
    applied_seq: int


class ChunksReply(Reply):
    chunks: list[ChunkOut]
    applied_seq: int


class ChunkStemsReply(Reply):
    uses: dict[str, int]  # chunk id -> stems its text uses (the chunks asked for that this shard holds)
    applied_seq: int


class ShardPage(Request, kw_only=True):
    """One more part of a reply too large for one message, from the replica that holds it: see
    PAGED_HEADER."""

    cursor: Annotated[str, Meta(min_length=1, max_length=64)]
    part: Annotated[int, Meta(ge=1)]


class QueryRowsReply(Reply):
    result: ShardRows
    applied_seq: int


class EntitiesReply(Reply):
    entities: list[EntityOut]
    applied_seq: int


class EdgesReply(Reply):
    edges: list[EdgeOut]
    applied_seq: int


# --- operations -----------------------------------------------------------------------------------

ENTITIES = Op("entities", ShardEntities, EntitiesReply, "Entities by ids")
EDGES = Op("edges", ShardEdges, EdgesReply, "1-hop edges of ids")
TEXT_STATS = Op("text_stats", ShardTextStats, TextStatsReply, "BM25 corpus statistics")
TEXT = Op("text", ShardText, TextReply, "BM25 top-k with global statistics")
MENTIONS = Op("mentions", ShardMentions, MentionsReply, "Chunks mentioning entities")
CHUNKS = Op("chunks", ShardChunks, ChunksReply, "Chunks by ids")
CHUNK_STEMS = Op("chunk_stems", ShardChunkStems, ChunkStemsReply, "How many given word stems chunks use")
QUERY = Op("query", ShardQuery, QueryRowsReply, "A planned read-only query")


# A reply larger than one NATS message is sent in parts: the first answers the request, with the
# header PAGED_HEADER set to "<cursor> <node> <parts>"; parts 1 .. parts-1 are asked of the replica
# that holds them, `page_subject(shard, node)`, with ShardPage; the concatenated bytes are the reply's JSON.
PAGE_OP = "page"


def page_subject(shard: int, node: str) -> str:
    """`torua.shard.<n>.page.<node>`: parts of large replies, on the one replica that holds them."""
    return f"torua.shard.{shard}.{PAGE_OP}.{node}"


# --- one operation for several shards one node serves (`subjects.shard_node`) ------------------------


class NodeShards(Request, kw_only=True):
    """`torua.shard.node.<node>.batch`: operation `op` (an `Op` name) for each shard in `shards`, its
    request as that shard's endpoint takes it (JSON, `after` and `log_id` included): a router's
    fan-out round, one message per node instead of one per shard. The node answers each shard its
    replica there serves, with the shard endpoint's own handler (the same rules)."""

    op: str
    shards: dict[int, msgspec.Raw]


class ShardError(Reply, omit_defaults=True):
    """A shard's error in a `NodeShardsReply`: what its endpoint would have answered."""

    code: int
    description: str
    retry_after_ms: int | None = None


class NodeShardsReply(Reply, omit_defaults=True):
    """The node's answer to `NodeShards`: each shard's reply (the op's reply JSON) or error; `left`:
    the shards it did not answer (no replica serving there now, not caught up in time, or the reply
    would not fit in one message), for the router to ask their queue groups as it would have."""

    shards: dict[int, msgspec.Raw] = msgspec.field(default_factory=dict)
    errors: dict[int, ShardError] = msgspec.field(default_factory=dict)
    left: list[int] = msgspec.field(default_factory=list)
