"""BM25 over one shard's chunk texts and entity names/descriptions, kept in memory like the vectors.

Scores are made comparable across shards by computing BM25's corpus statistics globally: the
router first asks every shard for its document frequencies, document count and total length, then
sends the global IDF and average length with the query. Each shard then scores its documents
exactly as one index over all the data would.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, KeysView

import kuzu

from torua.embedding import tokenize
from torua.text import entity_text
from torua_node.storage.store import all_rows

__all__ = ["TextIndex", "bm25_idf", "query_terms", "load_text_indexes"]

K1 = 1.2
B = 0.75
STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "how", "i", "in", "is", "it", "its", "of", "on", "or", "she", "that", "the", "their", "them", "they", "this", "to", "was", "were", "what", "when", "where", "which", "who", "whom", "whose", "why", "will", "with"]
)


def query_terms(text: str) -> list[str]:
    """Distinct content words of a query, in order."""
    return list(dict.fromkeys(t for t in tokenize(text) if t not in STOPWORDS))


def _terms(text: str) -> list[str]:
    return [t for t in tokenize(text) if t not in STOPWORDS]


def bm25_idf(df: int, n_docs: int) -> float:
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


class TextIndex:
    def __init__(self) -> None:
        self._postings: dict[str, dict[str, int]] = {}
        self._docs: dict[str, Counter[str]] = {}
        self._lengths: dict[str, int] = {}
        self.total_length = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def upsert(self, items: Iterable[tuple[str, str]]) -> None:
        for doc_id, text in items:
            self.remove([doc_id])
            terms = Counter(_terms(text))
            self._docs[doc_id] = terms
            length = sum(terms.values())
            self._lengths[doc_id] = length
            self.total_length += length
            for term, tf in terms.items():
                self._postings.setdefault(term, {})[doc_id] = tf

    def remove(self, doc_ids: Iterable[str]) -> None:
        for doc_id in doc_ids:
            terms = self._docs.pop(doc_id, None)
            if terms is None:
                continue
            self.total_length -= self._lengths.pop(doc_id)
            for term in terms:
                posting = self._postings[term]
                del posting[doc_id]
                if not posting:
                    del self._postings[term]

    def terms(self, doc_id: str) -> KeysView[str] | None:
        """A document's distinct indexed words (`query_terms` of its text); None if not indexed."""
        terms = self._docs.get(doc_id)
        return None if terms is None else terms.keys()

    def stats(self, terms: list[str]) -> tuple[dict[str, int], int, int]:
        """(document frequency per term, number of documents, total length) of this shard."""
        return {t: len(self._postings.get(t, ())) for t in terms}, len(self._lengths), self.total_length

    def search(self, idf: dict[str, float], avg_length: float, k: int) -> list[tuple[str, float]]:
        """Top k by BM25 with the given global statistics; ties broken by id."""
        scores: dict[str, float] = {}
        avg = avg_length or 1.0
        for term, weight in idf.items():
            for doc_id, tf in self._postings.get(term, {}).items():
                norm = tf + K1 * (1 - B + B * self._lengths[doc_id] / avg)
                scores[doc_id] = scores.get(doc_id, 0.0) + weight * tf * (K1 + 1) / norm
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def load_text_indexes(conn: kuzu.Connection) -> tuple[TextIndex, TextIndex]:
    """(entities, chunks) rebuilt from the database on open, indexed by the same texts as apply
    indexes them by (`torua.text.entity_text`, a chunk's text)."""
    entities, chunks = TextIndex(), TextIndex()
    rows = all_rows(conn, "MATCH (n:Entity) WHERE NOT n.stub RETURN n.id, n.name, n.description")
    entities.upsert((r[0], entity_text(r[1], r[2])) for r in rows)
    rows = all_rows(conn, "MATCH (n:Chunk) WHERE NOT n.stub RETURN n.id, n.text")
    chunks.upsert((r[0], r[1] or "") for r in rows)
    return entities, chunks
