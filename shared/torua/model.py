"""Wire messages of the data API (`torua.graph.*`, `torua.kv.*`) as msgspec Structs.

Limits are part of the contract: they are checked before anything reaches the write-ahead log,
and a violation is a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from torua.wire import Reply, Request

__all__ = [
    "UNTYPED_RELATION",
    "Id",
    "Consistency",
    "Entity",
    "Relation",
    "Chunk",
    "Document",
    "UpsertRequest",
    "UpsertReply",
    "RelationKey",
    "DeleteRequest",
    "DeleteReply",
    "GetRequest",
    "EntityOut",
    "GetReply",
    "NeighborsRequest",
    "EdgeOut",
    "NeighborsReply",
    "ShardStatus",
    "KVPutRequest",
    "KVGetRequest",
    "KVDeleteRequest",
    "KVReply",
    "Tokens",
    "VectorSearchRequest",
    "TextSearchRequest",
    "Hit",
    "SearchReply",
    "RetrieveRequest",
    "RetrievedChunk",
    "RetrievedEntity",
    "RetrievedRelation",
    "RetrieveReply",
    "QueryRequest",
    "QueryReply",
    "AnswerRequest",
    "AnswerReply",
    "MAX_ID_LEN",
    "MAX_KV_VALUE_BYTES",
]

MAX_ID_LEN = 512
MAX_TEXT_LEN = 1_000_000
MAX_KV_VALUE_BYTES = 1024 * 1024
MAX_BATCH = 100_000

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
Text = Annotated[str, Meta(max_length=MAX_TEXT_LEN)]
Name = Annotated[str, Meta(max_length=4096)]
TypeName = Annotated[str, Meta(max_length=256)]
Vector = Annotated[list[float], Meta(min_length=1, max_length=8192)]
Tokens = dict[str, int]  # shard (as a string, JSON keys are strings) -> stream sequence
# "strong" (the default): a read reflects every write acknowledged before it was sent, from any
# client; "eventual": any caught-up replica answers at once (only `after` tokens are waited for).
Consistency = Literal["strong", "eventual"]
RequestId = Annotated[str, Meta(min_length=1, max_length=128)]


class Entity(Request):
    id: Id
    name: Name = ""
    type: TypeName = ""
    description: Text = ""
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    embedding: Vector | None = None


UNTYPED_RELATION = "RELATED_TO"  # a relation that says only that its ends are related (co-occurrence)


class Relation(Request):
    source: Id
    target: Id
    type: Annotated[str, Meta(min_length=1, max_length=256)] = UNTYPED_RELATION
    weight: float = 1.0
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    chunks: list[Id] = msgspec.field(default_factory=list)


class Chunk(Request):
    id: Id
    document_id: Id
    text: Text
    embedding: Vector | None = None
    entities: list[Id] = msgspec.field(default_factory=list)
    position: int = 0


class Document(Request):
    id: Id
    title: Name = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class UpsertRequest(Request):
    documents: Annotated[list[Document], Meta(max_length=MAX_BATCH)] = msgspec.field(default_factory=list)
    chunks: Annotated[list[Chunk], Meta(max_length=MAX_BATCH)] = msgspec.field(default_factory=list)
    entities: Annotated[list[Entity], Meta(max_length=MAX_BATCH)] = msgspec.field(default_factory=list)
    relations: Annotated[list[Relation], Meta(max_length=MAX_BATCH)] = msgspec.field(default_factory=list)
    # Same request id twice (a retry) has one effect.
    request_id: RequestId | None = None


class UpsertReply(Reply):
    written: dict[str, int]
    tokens: Tokens
    request_id: str = ""


class RelationKey(Request):
    """Names one relation to delete: both ends and its type (no default: a delete names it)."""

    source: Id
    target: Id
    type: Annotated[str, Meta(min_length=1, max_length=256)]


class DeleteRequest(Request):
    entities: Annotated[list[Id], Meta(max_length=MAX_BATCH)] = msgspec.field(default_factory=list)
    documents: Annotated[list[Id], Meta(max_length=MAX_BATCH)] = msgspec.field(default_factory=list)
    relations: Annotated[list[RelationKey], Meta(max_length=MAX_BATCH)] = msgspec.field(default_factory=list)
    request_id: RequestId | None = None


class DeleteReply(Reply):
    deleted: dict[str, int]
    tokens: Tokens
    request_id: str = ""


class GetRequest(Request):
    id: Id
    embedding: bool = False  # include the entity's vector (it is most of a reply's bytes)
    after: Tokens = msgspec.field(default_factory=dict)
    consistency: Consistency = "strong"


class EntityOut(Reply):
    id: str
    name: str
    type: str
    description: str
    properties: dict[str, Any]
    embedding: list[float] | None = None


class GetReply(Reply):
    entity: EntityOut
    shard: int


class NeighborsRequest(Request):
    ids: Annotated[list[Id], Meta(min_length=1, max_length=10_000)]
    hops: Annotated[int, Meta(ge=1, le=10)] = 1
    direction: Literal["out", "in", "both"] = "both"
    types: list[str] | None = None
    limit: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    after: Tokens = msgspec.field(default_factory=dict)
    consistency: Consistency = "strong"


class EdgeOut(Reply):
    source: str
    target: str
    type: str
    weight: float
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    chunks: list[str] = msgspec.field(default_factory=list)


class ShardStatus(Reply):
    ok: bool
    error: str | None = None
    applied_seq: int | None = None


class NeighborsReply(Reply):
    nodes: list[EntityOut]
    edges: list[EdgeOut]
    partial: bool
    shards: dict[str, ShardStatus]


KVKey = Annotated[str, Meta(min_length=1, max_length=1024)]


class KVPutRequest(Request):
    key: KVKey
    value: str
    request_id: RequestId | None = None


class KVGetRequest(Request):
    key: KVKey
    after: Tokens = msgspec.field(default_factory=dict)
    consistency: Consistency = "strong"


class KVDeleteRequest(Request):
    key: KVKey
    request_id: RequestId | None = None


class KVReply(Reply):
    key: str
    value: str | None = None
    token: Tokens | None = None


# --- search and retrieval -------------------------------------------------------------------------

Target = Literal["chunks", "entities"]
TopK = Annotated[int, Meta(ge=1, le=1000)]
# At least one non-space character: a blank question or query matches nothing meaningful.
Query = Annotated[str, Meta(min_length=1, max_length=10_000, pattern=r"\S")]


class VectorSearchRequest(Request):
    vector: Vector | None = None
    text: Query | None = None
    k: TopK = 10
    target: Target = "chunks"
    after: Tokens = msgspec.field(default_factory=dict)
    consistency: Consistency = "strong"


class TextSearchRequest(Request):
    text: Query
    k: TopK = 10
    target: Target = "chunks"
    after: Tokens = msgspec.field(default_factory=dict)
    consistency: Consistency = "strong"


class Hit(Reply):
    id: str
    score: float
    shard: int


class SearchReply(Reply):
    hits: list[Hit]
    partial: bool
    shards: dict[str, ShardStatus] = msgspec.field(default_factory=dict)


class RetrieveRequest(Request):
    question: Query
    k: Annotated[int, Meta(ge=1, le=100)] = 5
    hops: Annotated[int, Meta(ge=0, le=4)] = 3
    token_budget: Annotated[int, Meta(ge=16, le=200_000)] = 2000
    after: Tokens = msgspec.field(default_factory=dict)
    consistency: Consistency = "strong"


class RetrievedChunk(Reply):
    id: str
    document_id: str
    text: str
    score: float
    shard: int
    entities: list[str] = msgspec.field(default_factory=list)


class RetrievedEntity(Reply):
    id: str
    name: str
    type: str
    hop: int
    shard: int


class RetrievedRelation(Reply):
    source: str
    target: str
    type: str
    weight: float
    chunks: list[str]
    shard: int


class RetrieveReply(Reply):
    context: str
    chunks: list[RetrievedChunk]
    entities: list[RetrievedEntity]
    relations: list[RetrievedRelation]
    partial: bool
    shards: dict[str, ShardStatus] = msgspec.field(default_factory=dict)
    tokens_used: int = 0


class QueryRequest(Request):
    cypher: Annotated[str, Meta(min_length=1, max_length=100_000)]
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    after: Tokens = msgspec.field(default_factory=dict)
    consistency: Consistency = "strong"
    # Milliseconds the query may run; only lowers the node's TORUA_QUERY_TIMEOUT. Over it: 408.
    timeout_ms: Annotated[int, Meta(ge=1)] | None = None


class QueryReply(Reply):
    columns: list[str]
    rows: list[list[Any]]
    partial: bool
    shards: dict[str, ShardStatus] = msgspec.field(default_factory=dict)


class AnswerRequest(RetrieveRequest):
    """`torua.rag.answer`: rag.retrieve's fields; the answer cites the chunk ids it used."""


class AnswerReply(Reply):
    answer: str
    citations: list[str]  # chunk ids cited by the answer, each one of the retrieved chunks
    context: str
    chunks: list[RetrievedChunk] = msgspec.field(default_factory=list)
    model: str = ""
    partial: bool = False
