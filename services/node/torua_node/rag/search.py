"""Vector, BM25 and hybrid search across shards (`torua.search.*`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from torua.errors import BadRequest
from torua.model import Hit, SearchReply, ShardStatus, TextSearchRequest, Tokens, VectorSearchRequest
from torua_node.rag.ranking import global_bm25, rrf, top_k
from torua_node.shard.api import HitsReply, ShardText, ShardTextStats, ShardVector, TextStatsReply
from torua_node.storage.textindex import query_terms

if TYPE_CHECKING:
    from torua_node.router.api import Router

__all__ = ["Search"]

Status = dict[str, ShardStatus]


class Search:
    def __init__(self, router: Router) -> None:
        self.router = router

    def _all(self) -> range:
        return range(self.router.shardmap().num_shards)

    async def vector_hits(self, vector: list[float], k: int, target: str, after: Tokens, status: Status) -> list[Hit]:
        r = self.router

        def call(s: int):
            req = ShardVector(vector=vector, k=k, target=target, after=r.after(after, s))  # type: ignore[arg-type]
            return lambda: r.shard_call(s, "vector", req, HitsReply)

        replies = await r.gather_shards({s: call(s) for s in self._all()}, status)
        return top_k((Hit(id=i, score=sc, shard=s) for s, rep in replies.items() for i, sc in rep.hits), k)

    async def text_hits(self, text: str, k: int, target: str, after: Tokens, status: Status) -> list[Hit]:
        """BM25 in two rounds: global corpus statistics first, then scoring with them on every shard."""
        r = self.router
        terms = query_terms(text)
        if not terms:
            return []

        def stats_call(s: int):
            req = ShardTextStats(terms=terms, target=target, after=r.after(after, s))  # type: ignore[arg-type]
            return lambda: r.shard_call(s, "text_stats", req, TextStatsReply)

        stats = await r.gather_shards({s: stats_call(s) for s in self._all()}, status)
        idf, avg = global_bm25([(st.df, st.n_docs, st.total_length) for st in stats.values()], terms)

        def search_call(s: int):
            req = ShardText(idf=idf, avg_length=avg, k=k, target=target, after=r.after(after, s))  # type: ignore[arg-type]
            return lambda: r.shard_call(s, "text", req, HitsReply)

        replies = await r.gather_shards({s: search_call(s) for s in stats}, status)
        return top_k((Hit(id=i, score=sc, shard=s) for s, rep in replies.items() for i, sc in rep.hits), k)

    async def embed(self, text: str) -> list[float]:
        """The query text as the cluster's embedder sees it (on a thread: it may be a model or HTTP)."""
        rows = await asyncio.to_thread(self.router.embedder().embed, [text])
        return rows[0].tolist()

    async def vector(self, req: VectorSearchRequest) -> SearchReply:
        if (req.vector is None) == (req.text is None):
            raise BadRequest("give exactly one of vector or text")
        vector = req.vector if req.vector is not None else await self.embed(req.text or "")
        dim = self.router.shardmap().embedding_dim
        if len(vector) != dim:
            raise BadRequest(f"vector has {len(vector)} values; this cluster's embedding_dim is {dim}")
        status: Status = {}
        hits = await self.vector_hits(vector, req.k, req.target, req.after, status)
        return SearchReply(hits=hits, partial=_partial(status), shards=status)

    async def text(self, req: TextSearchRequest) -> SearchReply:
        status: Status = {}
        hits = await self.text_hits(req.text, req.k, req.target, req.after, status)
        return SearchReply(hits=hits, partial=_partial(status), shards=status)

    async def hybrid(self, req: TextSearchRequest) -> SearchReply:
        """Reciprocal rank fusion of BM25 and vector search over the same text."""
        status: Status = {}
        depth = max(req.k * 3, 30)
        bm25 = await self.text_hits(req.text, depth, req.target, req.after, status)
        vec = await self.vector_hits(await self.embed(req.text), depth, req.target, req.after, status)
        return SearchReply(hits=rrf([bm25, vec], req.k), partial=_partial(status), shards=status)


def _partial(status: Status) -> bool:
    return any(not s.ok for s in status.values())
