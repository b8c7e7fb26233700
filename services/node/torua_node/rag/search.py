"""Vector, BM25 and hybrid search across shards (`torua.search.*`), over a ShardClient.

Every shard answers its own top k; the global top k is merged with ties broken by id, so the answer
never depends on the number of shards. BM25 runs in two rounds so that scores are comparable: the
corpus statistics of every shard first, then scoring with the global IDF and average length.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from torua.embedding import embed_soon
from torua.errors import BadRequest
from torua.model import (
    Consistency,
    EdgeOut,
    EntityOut,
    Hit,
    SearchReply,
    TextSearchRequest,
    Tokens,
    VectorSearchRequest,
)
from torua.shardwire import merge_hits
from torua_node.rag.ranking import global_bm25, rrf
from torua_node.router.client import EmbedderProvider, ShardClient, Status, is_partial, token
from torua_node.router.readpoint import every_shard, reading
from torua_node.shard.protocol import (
    TEXT,
    TEXT_STATS,
    VECTOR,
    HitsReply,
    ShardText,
    ShardTextStats,
    ShardVector,
    Target,
    TextReply,
)
from torua_node.storage.textindex import query_terms

__all__ = ["Search", "TextHits", "HYBRID_MIN_DEPTH"]

HYBRID_MIN_DEPTH = 30  # each list fused by hybrid search is at least this deep (3 k otherwise)


@dataclass(frozen=True, slots=True)
class TextHits:
    hits: list[Hit]
    corpus_size: int  # documents (chunks or entities) the statistics were taken over, all shards
    idf: dict[str, float] = field(default_factory=dict)  # per query term, over those documents
    # Asked with `graph_edges` (entities): the rows of the hits the text names (`graph_named`), and
    # the relations touching them — None when a shard had `graph_edges` of them (maybe more) —
    # except for the hits `unsent`, which their shard ranked below `graph_top` (nothing known).
    rows: list[EntityOut] | None = None
    edges: list[EdgeOut] | None = None
    unsent: list[str] = field(default_factory=list)


class Search:
    def __init__(self, client: ShardClient, embedder: EmbedderProvider) -> None:
        self.client = client
        self.embedder = embedder

    async def vector_hits(
        self,
        vector: list[float],
        k: int,
        target: Target,
        after: Tokens,
        status: Status,
        *,
        consistency: Consistency = "strong",
    ) -> list[Hit]:
        requests = {
            s: ShardVector(vector=vector, k=k, target=target, after=token(after, s), consistency=consistency) for s in range(self.client.num_shards)
        }
        return _merged(await self.client.fan_out(VECTOR, requests, status), k)

    async def text_hits(
        self,
        text: str,
        k: int,
        target: Target,
        after: Tokens,
        status: Status,
        *,
        consistency: Consistency = "strong",
    ) -> list[Hit]:
        return (await self.bm25(text, k, target, after, status, consistency=consistency)).hits

    async def bm25(
        self,
        text: str,
        k: int,
        target: Target,
        after: Tokens,
        status: Status,
        *,
        consistency: Consistency = "strong",
        graph_edges: int = 0,
        graph_named: float = 0.0,
        graph_top: int = 0,
    ) -> TextHits:
        """BM25 in two rounds: global corpus statistics first, then scoring with them on every shard
        that answered the first. `graph_edges` (entities): the second round also brings the rows
        and relations of the global top k that the text names (`ShardText.graph_edges`: each shard
        sends those of its best `graph_top`; the hits ranked below that on their shard are
        `unsent`)."""
        terms = query_terms(text)
        if not terms:
            return TextHits(hits=[], corpus_size=0)
        ask = {s: ShardTextStats(terms=terms, target=target, after=token(after, s), consistency=consistency) for s in range(self.client.num_shards)}
        stats = await self.client.fan_out(TEXT_STATS, ask, status)
        idf, avg = global_bm25([(st.df, st.n_docs, st.total_length) for st in stats.values()], terms)
        score = {
            s: ShardText(
                idf=idf, avg_length=avg, k=k, target=target, after=token(after, s), consistency=consistency,
                graph_edges=graph_edges, graph_named=graph_named, graph_top=graph_top,
            )
            for s in stats
        }
        replies = await self.client.fan_out(TEXT, score, status)
        hits = _merged(replies, k)
        corpus = sum(st.n_docs for st in stats.values())
        if not graph_edges:
            return TextHits(hits=hits, corpus_size=corpus, idf=idf)
        rows, edges, unsent = _graph_of(hits, replies, graph_edges, graph_top)
        return TextHits(hits=hits, corpus_size=corpus, idf=idf, rows=rows, edges=edges, unsent=unsent)

    async def embed(self, text: str) -> list[float]:
        """The query text as the cluster's embedder sees it (on a thread if it is a model or HTTP)."""
        rows = await embed_soon(self.embedder(), [text])
        return [float(x) for x in rows[0]]

    async def vector(self, req: VectorSearchRequest) -> SearchReply:
        if (req.vector is None) == (req.text is None):
            raise BadRequest("give exactly one of vector or text")
        vector = req.vector if req.vector is not None else await self.embed(req.text or "")
        dim = self.embedder.dim
        if len(vector) != dim:
            raise BadRequest(f"vector has {len(vector)} values; this cluster's embedding_dim is {dim}")
        status: Status = {}
        hits = await self.vector_hits(vector, req.k, req.target, req.after, status, consistency=req.consistency)
        return SearchReply(hits=hits, partial=is_partial(status), shards=status)

    async def text(self, req: TextSearchRequest) -> SearchReply:
        status: Status = {}
        with reading(self.client.log_ends, prefetch=every_shard(self.client.num_shards, req.consistency)):  # two rounds
            hits = await self.text_hits(req.text, req.k, req.target, req.after, status, consistency=req.consistency)
        return SearchReply(hits=hits, partial=is_partial(status), shards=status)

    async def hybrid(self, req: TextSearchRequest) -> SearchReply:
        """Reciprocal rank fusion of BM25 and vector search over the same text."""
        status: Status = {}
        depth = max(req.k * 3, HYBRID_MIN_DEPTH)

        async def vector() -> list[Hit]:
            vec = await self.embed(req.text)
            return await self.vector_hits(vec, depth, req.target, req.after, status, consistency=req.consistency)

        # BM25's two rounds and the embedding with its round are independent: concurrently, at one
        # read point (one log end per shard for the three rounds).
        with reading(self.client.log_ends, prefetch=every_shard(self.client.num_shards, req.consistency)):
            bm25, vec = await asyncio.gather(
                self.text_hits(req.text, depth, req.target, req.after, status, consistency=req.consistency), vector()
            )
        return SearchReply(hits=rrf([bm25, vec], req.k), partial=is_partial(status), shards=status)


def _graph_of(
    hits: list[Hit], replies: dict[int, TextReply], limit: int, top: int
) -> tuple[list[EntityOut], list[EdgeOut] | None, list[str]]:
    """Of the rows and relations each shard sent for its best `top` hits (0: all), those of the
    global top k (`hits`): what an entities and an edges round for the named ones would answer (a
    shard holds its entities' relations, at both ends); and the hits a shard ranked below its `top`,
    which sent nothing. Relations None when a shard sent `limit` (maybe cut)."""
    sent = {s: {i for i, _ in (r.hits[:top] if top else r.hits)} for s, r in replies.items()}
    kept: dict[int, set[str]] = {}
    unsent: list[str] = []
    for h in hits:
        if h.id in sent[h.shard]:
            kept.setdefault(h.shard, set()).add(h.id)
        else:
            unsent.append(h.id)
    rows: list[EntityOut] = []
    edges: list[EdgeOut] | None = []
    for s, ids in kept.items():
        reply = replies[s]
        rows.extend(e for e in reply.entities if e.id in ids)
        if edges is not None:
            if len(reply.edges) >= limit:
                edges = None
            else:
                edges.extend(e for e in reply.edges if e.source in ids or e.target in ids)
    return rows, edges, unsent


def _merged(replies: Mapping[int, HitsReply], k: int) -> list[Hit]:
    # The one merge, shared with the Python client's direct vector search (torua.shardwire).
    return merge_hits(replies, k)
