"""Vector, BM25 and hybrid search across shards (`torua.search.*`), over a ShardClient.

Every shard answers its own top k; the global top k is merged with ties broken by id, so the answer
never depends on the number of shards. BM25 runs in two rounds so that scores are comparable: the
corpus statistics of every shard first, then scoring with the global IDF and average length.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from torua.errors import BadRequest
from torua.model import Consistency, Hit, SearchReply, TextSearchRequest, Tokens, VectorSearchRequest
from torua.shardwire import merge_hits
from torua_node.rag.ranking import global_bm25, rrf
from torua_node.router.client import EmbedderProvider, ShardClient, Status, is_partial, token
from torua_node.router.readpoint import reading
from torua_node.shard.protocol import (
    TEXT,
    TEXT_STATS,
    VECTOR,
    HitsReply,
    ShardText,
    ShardTextStats,
    ShardVector,
    Target,
)
from torua_node.storage.textindex import query_terms

__all__ = ["Search", "TextHits", "HYBRID_MIN_DEPTH"]

HYBRID_MIN_DEPTH = 30  # each list fused by hybrid search is at least this deep (3 k otherwise)


@dataclass(frozen=True, slots=True)
class TextHits:
    hits: list[Hit]
    corpus_size: int  # documents (chunks or entities) the statistics were taken over, all shards


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
    ) -> TextHits:
        """BM25 in two rounds: global corpus statistics first, then scoring with them on every shard
        that answered the first."""
        terms = query_terms(text)
        if not terms:
            return TextHits(hits=[], corpus_size=0)
        ask = {s: ShardTextStats(terms=terms, target=target, after=token(after, s), consistency=consistency) for s in range(self.client.num_shards)}
        stats = await self.client.fan_out(TEXT_STATS, ask, status)
        idf, avg = global_bm25([(st.df, st.n_docs, st.total_length) for st in stats.values()], terms)
        score = {s: ShardText(idf=idf, avg_length=avg, k=k, target=target, after=token(after, s), consistency=consistency) for s in stats}
        hits = _merged(await self.client.fan_out(TEXT, score, status), k)
        return TextHits(hits=hits, corpus_size=sum(st.n_docs for st in stats.values()))

    async def embed(self, text: str) -> list[float]:
        """The query text as the cluster's embedder sees it (on a thread: it may be a model or HTTP)."""
        rows = await asyncio.to_thread(self.embedder().embed, [text])
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
        with reading(self.client.log_ends):  # two rounds: one log end per shard
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
        with reading(self.client.log_ends):
            bm25, vec = await asyncio.gather(
                self.text_hits(req.text, depth, req.target, req.after, status, consistency=req.consistency), vector()
            )
        return SearchReply(hits=rrf([bm25, vec], req.k), partial=is_partial(status), shards=status)


def _merged(replies: dict[int, HitsReply], k: int) -> list[Hit]:
    # The one merge, shared with the Python client's direct vector search (torua.shardwire).
    return merge_hits(replies, k)
