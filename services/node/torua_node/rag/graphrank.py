"""Pure scoring for GraphRAG retrieval: how strongly each entity, relation and chunk is tied to a question.

- Seeds are entities named in the question (BM25 over names and descriptions); a seed's weight is
  its score relative to the best seed, squared, so a full-name match dominates a common word.
- Weights spread along relations with a decay per hop (best path wins, at most 1); a relation whose
  type shares a word with the question ("founded") passes on more, so the path the question
  describes outweighs other facts about the same seed.
- An entity whose type the question names ("which city") counts extra: questions usually say what
  they are looking for.
- A chunk scores by its direct search rank, the entities it mentions, and the relations it states.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from torua.model import EdgeOut, Hit
from torua_node.storage.textindex import query_terms

__all__ = ["Weights", "stems", "seed_weights", "spread", "overlap", "entity_relevance", "relation_score", "ChunkScores"]


@dataclass(frozen=True, slots=True)
class Weights:
    direct: float = 1.0  # best direct (BM25 + vector) hit; the others in proportion
    mention: float = 1.0  # per mentioned entity, times that entity's relevance
    provenance: float = 1.5  # per stated relation, times that relation's score
    decay: float = 0.7  # per hop away from a seed
    type_boost: float = 1.0  # an entity whose type the question names
    relation_boost: float = 1.0  # per question word in a relation's type


def _stem(word: str) -> str:
    return word[:4]


def stems(text: str) -> set[str]:
    return {_stem(t) for t in query_terms(text) if len(t) >= 3}


def _words(label: str) -> list[str]:
    return label.lower().replace("_", " ").replace("-", " ").split()


def seed_weights(hits: Iterable[Hit]) -> dict[str, float]:
    hits = list(hits)
    best = max((h.score for h in hits), default=0.0)
    return {h.id: (h.score / best) ** 2 for h in hits} if best > 0 else {}


def overlap(label: str, question: set[str]) -> int:
    return sum(1 for t in _words(label) if _stem(t) in question)


def spread(seeds: dict[str, float], edges: list[EdgeOut], hops: int, question: set[str], w: Weights) -> dict[str, float]:
    """Best weight of every entity over paths of at most `hops` relations from a seed."""
    weight = dict(seeds)
    factor = [min(1.0, w.decay * (1 + w.relation_boost * overlap(e.type, question))) for e in edges]
    for _ in range(hops):
        changed = False
        for e, f in zip(edges, factor):
            for a, b in ((e.source, e.target), (e.target, e.source)):
                w_b = weight.get(a, 0.0) * f
                if w_b > weight.get(b, 0.0):
                    weight[b] = w_b
                    changed = True
        if not changed:
            break
    return weight


def entity_relevance(weight: float, entity_type: str, question: set[str], w: Weights) -> float:
    named = any(_stem(t) in question for t in _words(entity_type))
    return weight * (1 + w.type_boost * named)


def relation_score(e: EdgeOut, weight: dict[str, float], question: set[str], w: Weights) -> float:
    strongest = max(weight.get(e.source, 0.0), weight.get(e.target, 0.0))
    return strongest * (1 + w.relation_boost * overlap(e.type, question))


class ChunkScores:
    def __init__(self) -> None:
        self.score: dict[str, float] = defaultdict(float)

    def add(self, chunk_id: str, points: float) -> None:
        self.score[chunk_id] += points

    def ranked(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.score.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
