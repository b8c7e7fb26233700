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
]

Direction = Literal["out", "in", "both"]
Target = Literal["chunks", "entities"]


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
TEXT = Op("text", ShardText, HitsReply, "BM25 top-k with global statistics")
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
