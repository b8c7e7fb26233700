"""Pure merging of ranked lists: global top-k, BM25 statistics, reciprocal rank fusion."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torua.model import Hit
from torua_node.storage.textindex import bm25_idf

__all__ = ["top_k", "global_bm25", "rrf", "RRF_K"]

RRF_K = 60


def top_k(hits: Iterable[Hit], k: int) -> list[Hit]:
    """Best first; equal scores ordered by id, so the answer never depends on the shard count."""
    return sorted(hits, key=lambda h: (-h.score, h.id))[:k]


def global_bm25(stats: Sequence[tuple[dict[str, int], int, int]], terms: list[str]) -> tuple[dict[str, float], float]:
    """IDF per term and average length over all shards' (df, n_docs, total_length)."""
    n_docs = sum(s[1] for s in stats)
    total = sum(s[2] for s in stats)
    idf = {t: bm25_idf(sum(s[0].get(t, 0) for s in stats), n_docs) for t in terms}
    return idf, (total / n_docs if n_docs else 0.0)


def rrf(rankings: Sequence[Sequence[Hit]], k: int, c: int = RRF_K) -> list[Hit]:
    """Reciprocal rank fusion: score = sum over lists of 1 / (c + rank)."""
    scores: dict[str, float] = {}
    shard: dict[str, int] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (c + rank)
            shard[hit.id] = hit.shard
    return top_k((Hit(id=i, score=s, shard=shard[i]) for i, s in scores.items()), k)
