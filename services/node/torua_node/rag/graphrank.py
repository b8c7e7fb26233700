"""Pure scoring for GraphRAG retrieval: text evidence and graph evidence for every chunk, fused.

A chunk's score is `direct * text + graph`:

- **text**: its BM25 score over the best BM25 score, and its cosine over the range of the vector
  hits, mixed `text_share : 1 - text_share` (a convex combination, which measured better than
  reciprocal rank fusion here: it keeps how far ahead the best hits are).
- **graph**: how strongly it is tied to the question through the graph, from
  - *seeds*: entities whose name the question covers (at least `min_coverage` of the name's words),
    weighted by that coverage squared and by their BM25 match, so "Lotem Oshloson" outweighs
    "Lotem Praprason" for a question about the first, and a one-word name is a weak seed, and by
    how rare in the chunks the words naming them are (`name_specificity`: "pick up" does not ask
    about the metric `up`);
  - *paths*: each seed's weight spreads along relations, at most `hops` of them, best path wins;
    a relation passes on `decay * relevance * confidence`, where relevance is how close its type
    is in meaning to a word of the question ("started" ~ FOUNDED: the cluster's embedder
    compares them) or how many of the question's other words a chunk stating it uses
    ("hometown" in "Rena's hometown is Kell", for BORN_IN), whichever is more, with
    `relation_floor` for unrelated types; confidence is the relation's weight
    (an extractor's guess passes on less than a stated fact). An entity reached from two seeds
    gets `second_seed` of the second path too: bridge and comparison questions meet there;
  - *evidence*: the strongest relation the chunk states (the weight it passes on, doubled when
    the far end's type is one the question names: "which country"), plus the strongest entity it
    mentions, times `mention` and that entity's specificity (an entity mentioned by many chunks
    says little about any one of them: inverse document frequency, scaled to 0..1).
  Evidence is a chunk's strongest piece, not a sum, so a table that mentions forty loosely related
  entities does not outrank the passage that states the one fact asked for.

Defaults were chosen by measurement on the two evaluations in bench/ (README: retrieval quality).
Everything here is deterministic: ties are broken by id, and nothing depends on input order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress

import numpy as np

from torua.model import EdgeOut, Hit
from torua_node.shard.protocol import name_coverage
from torua_node.storage.textindex import bm25_idf, query_terms

__all__ = [
    "Weights",
    "stems",
    "direct_scores",
    "seed_weights",
    "name_coverage",
    "relation_relevance",
    "stating_chunks",
    "lexical_relevance",
    "lexical_relevance_of",
    "STEM_LENGTH",
    "STEM_MIN_WORD",
    "relation_factors",
    "spread",
    "Paths",
    "specificity",
    "type_named",
    "ChunkEvidence",
    "fuse",
]


@dataclass(frozen=True, slots=True)
class Weights:
    candidates: int = 50  # BM25 and vector hits taken as direct candidates (each list)
    seed_entities: int = 20  # entities matched by BM25 before the coverage filter
    text_share: float = 0.6  # BM25's part of the text score; the vector's is the rest
    direct: float = 0.5  # the text score's weight against the graph's
    min_coverage: float = 0.5  # of a name's words the question must contain for it to seed
    decay: float = 0.85  # per relation followed
    relation_floor: float = 0.3  # relevance of a relation type unrelated to the question
    second_seed: float = 1.0  # share of the second-best seed's path an entity also gets
    mention: float = 0.15  # weight of the strongest mentioned entity
    provenance: float = 1.0  # weight of the strongest stated relation
    type_boost: float = 1.0  # an entity whose type the question names counts (1 + this) times
    both_ends: float = 1.0  # a stated relation also counts its weaker end's weight, times this
    stating_chunks: int = 10  # per relation type, chunks whose words say what it means (3, 5, 10, 20, 40 measured)
    common_share: float = 0.1  # a word in this share of the chunks or fewer names a seed fully (0.003, 0.01, 0.03, 0.1 measured)


STEM_LENGTH = 4  # a word's stem is its first letters
STEM_MIN_WORD = 3  # shorter words have none


def _stem(word: str) -> str:
    return word[:STEM_LENGTH]


def stems(text: str) -> set[str]:
    return {_stem(t) for t in query_terms(text) if len(t) >= STEM_MIN_WORD}


def _words(label: str) -> list[str]:
    return label.lower().replace("_", " ").replace("-", " ").split()


def type_label(relation_type: str) -> str:
    """A relation type as words ("HEADQUARTERED_IN" -> "headquartered in"), for the embedder."""
    return " ".join(_words(relation_type))


def direct_scores(bm25: Sequence[Hit], vector: Sequence[Hit], w: Weights) -> dict[str, float]:
    """Text score in 0..1: BM25 over the best BM25 hit, cosine min-max scaled over the vector hits."""
    out: dict[str, float] = defaultdict(float)
    if bm25 and bm25[0].score > 0:
        for h in bm25:
            out[h.id] += w.text_share * h.score / bm25[0].score
    if vector:
        top, low = vector[0].score, vector[-1].score
        span = top - low
        for h in vector:
            out[h.id] += (1 - w.text_share) * ((h.score - low) / span if span > 0 else 1.0)
    return dict(out)


def seed_weights(
    hits: Sequence[Hit], names: Mapping[str, str], question: str, w: Weights,
    text_idf: Mapping[str, float] | None = None, text_docs: int = 0,
) -> dict[str, float]:
    """Entities the question names: coverage of the name's words, squared, times the BM25 match
    relative to the best one, times how specific the words naming it are to the text (`name_specificity`).
    Names covered less than `min_coverage` are not seeds."""
    asked = set(query_terms(question))
    best = max((h.score for h in hits), default=0.0)
    seeds: dict[str, float] = {}
    if best <= 0:
        return seeds
    for h in hits:
        name = names.get(h.id, "")
        coverage = name_coverage(name, asked)
        if coverage is not None and coverage >= w.min_coverage:
            seeds[h.id] = coverage**2 * h.score / best * name_specificity(name, asked, text_idf, text_docs, w)
    return seeds


def name_specificity(
    name: str, asked: Collection[str], text_idf: Mapping[str, float] | None, text_docs: int, w: Weights
) -> float:
    """How much the question's words naming an entity tell about the text, 0..1: the chunks' IDF of
    the rarest of them over the IDF of a word in `common_share` of the chunks, at most 1 (1 without
    statistics). A question that says "pick up" or the product's own name names the metric `up`, or
    the product, only in passing: such words are in many chunks, and a seed named by them alone is
    a weak one (inverse document frequency, as BM25 weighs the same words)."""
    covered = [t for t in query_terms(name) if t in asked]
    if text_idf is None or not covered or text_docs <= 0:
        return 1.0
    common = bm25_idf(max(1, round(w.common_share * text_docs)), text_docs)
    rarest = max(text_idf.get(t, common) for t in covered)
    return min(1.0, rarest / common) if common > 0 else 1.0


def relation_relevance(type_vectors: np.ndarray, word_vectors: np.ndarray) -> np.ndarray:
    """Per relation type (rows of `type_vectors`), how close it is to the closest question word,
    scaled so the closest type is 1 (0 when nothing is close). Vectors are L2-normalised."""
    if len(type_vectors) == 0 or len(word_vectors) == 0:
        return np.zeros(len(type_vectors))
    sims = np.clip((type_vectors @ word_vectors.T).max(axis=1), 0.0, None)
    top = float(sims.max())
    return sims / top if top > 0 else sims


def stating_chunks(edges: Sequence[EdgeOut], per_type: int, untyped: str) -> dict[str, list[str]]:
    """Per relation type, up to `per_type` chunks that state relations of it (the first three of
    each relation's, lowest ids first). The untyped relation is left out: its chunks say only that
    two things co-occur, not what the relation means."""
    found: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        if e.type != untyped:
            found[e.type].update(e.chunks[:3])
    return {t: sorted(cs)[:per_type] for t, cs in sorted(found.items())}


def lexical_relevance(stated_by: Mapping[str, Sequence[str]], texts: Mapping[str, str], asked: set[str]) -> dict[str, float]:
    """Per relation type, the most question words (stems of `asked`) one chunk stating it contains,
    scaled so the best type is 1. A corpus's own wording tells what a relation means where its
    label does not: "Rena's hometown is Kell" states BORN_IN, which "hometown" alone is not close to."""
    return lexical_relevance_of(stated_by, {c: len(asked & stems(text)) for c, text in texts.items()})


def lexical_relevance_of(stated_by: Mapping[str, Sequence[str]], uses: Mapping[str, int]) -> dict[str, float]:
    """`lexical_relevance` from how many question stems each chunk uses (absent: none), as a shard
    counts them from its text index (`ShardChunkStems`) without the chunks' texts."""
    counts = {t: max((uses.get(c, 0) for c in cs), default=0) for t, cs in stated_by.items()}
    top = max(counts.values(), default=0)
    return {t: n / top for t, n in counts.items() if n} if top else {}


def relation_factors(edges: Sequence[EdgeOut], relevance: Mapping[str, float], w: Weights) -> np.ndarray:
    """What each relation passes on: decay x relevance of its type (floored) x its confidence."""
    per_type: dict[str, float] = {}
    for e in edges:
        if e.type not in per_type:
            per_type[e.type] = w.decay * (w.relation_floor + (1 - w.relation_floor) * relevance.get(e.type, 0.0))
    of_type = np.fromiter((per_type[e.type] for e in edges), np.float64, len(edges))
    weight = np.fromiter((e.weight for e in edges), np.float64, len(edges))
    # min(1, max(0, weight)) as Python takes it (a NaN weight counts 0).
    weight = np.where(weight > 0.0, weight, 0.0)
    return of_type * np.where(weight < 1.0, weight, 1.0)


@dataclass(frozen=True, slots=True)
class Paths:
    weight: dict[str, float]  # entity id -> its weight
    forward: np.ndarray  # per relation: the most it carried from its source to its target
    backward: np.ndarray  # ... and from its target to its source


def spread(seeds: Mapping[str, float], edges: Sequence[EdgeOut], factors: np.ndarray, hops: int, w: Weights) -> Paths:
    """Every entity's weight: its best path of at most `hops` relations from any seed (the product
    of the seed's weight and the factors along it), plus `second_seed` x its best path from another
    seed. Relations are followed both ways, but a path never turns straight back along the type it
    came by (A -WORKS_FOR-> B <-WORKS_FOR- C relates B's employees to each other, not a chain a
    question describes, and at a hub it would outweigh the real next hop). Rounds are synchronous,
    so a path is never longer than `hops`, and nothing depends on the order of `edges` (between
    equally good arrivals, the lowest type and direction is remembered). What each relation
    carried, each way, is its weight as evidence: a relation off every path (a U-turn) carries
    nothing."""
    m = len(edges)
    carried = np.zeros(2 * m)
    if not seeds:
        return Paths({}, carried[:m], carried[m:])
    # Synchronous rounds over every seed and relation, done sparsely: the same products and maxima,
    # so the same floats (for finite seeds and factors). A step can change something only if its
    # source's weight for that seed rose in the round before (else what it carries was counted then,
    # and is no more than what it arrives at holds already): each round follows only those.
    sources = [e.source for e in edges]
    targets = [e.target for e in edges]
    nodes = sorted(set(seeds).union(sources, targets))
    index = dict(zip(nodes, range(len(nodes))))
    n_nodes, n_seeds = len(nodes), len(seeds)
    weights = np.zeros((n_seeds, n_nodes))  # per seed (any order: seeds do not interact), per node
    flat = weights.reshape(-1)  # a view: cell seed * n_nodes + node
    node = np.fromiter(map(index.__getitem__, seeds), np.intp, n_seeds)
    cells = node + np.arange(0, n_seeds * n_nodes, n_nodes)  # the cells whose weight rose
    flat[cells] = list(seeds.values())
    if m and hops > 0:
        kinds = [e.type for e in edges]
        types = sorted(set(kinds))
        type_index = dict(zip(types, range(len(types))))
        src = np.fromiter(map(index.__getitem__, sources + targets), np.intp, 2 * m)
        dst = np.concatenate((src[m:], src[:m]))
        t = np.fromiter(map(type_index.__getitem__, kinds), np.intp, m)
        # Steps (each relation both ways) grouped by the node they leave: a node's are
        # last[node] - deg[node] .. last[node] - 1 in this order (int16 sorts by radix: faster).
        order = np.argsort(src.astype(np.int16) if n_nodes < 2**15 else src, kind="stable")
        src = src[order]
        deg = np.bincount(src, minlength=n_nodes)
        last = deg.cumsum()
        move = dst[order] - src  # a step from cell c arrives at cell c + move
        f = np.concatenate((factors, factors))[order]
        arrive = np.concatenate((2 * t, 2 * t + 1))[order]  # how a step arrives: type and direction
        u_turn = arrive ^ 1  # the same type, walked the other way
        none = 2 * len(types)
        came = np.full(flat.shape, -1)  # per cell: how its best path arrived
        out = np.zeros(2 * m)  # carried, per step in this order
        rose = np.zeros(flat.shape, dtype=bool)  # to list each cell that rose once
        negative = min(seeds.values()) < 0
        for r in range(hops):
            if r:
                node = cells % n_nodes
            cnt = deg[node]
            ends = cnt.cumsum()
            total = int(ends[-1])
            pos = (last[node] - ends).repeat(cnt)  # every step out of every cell in `cells`
            pos += np.arange(total)
            cell = cells.repeat(cnt)
            cand = flat[cell] * f[pos]
            if r:  # nothing has arrived anywhere before the first round
                cand[came[cell] == u_turn[pos]] = 0.0
            np.maximum.at(out, pos, cand)
            if negative and r == 0:  # a round sets every weight to at least its best arrival, or 0
                np.maximum(weights, 0.0, out=weights)
            key = cell + move[pos]
            better = (cand > flat[key]).nonzero()[0]  # only these can change their cell
            if not len(better):
                break
            key, cand = key[better], cand[better]
            np.maximum.at(flat, key, cand)
            if r == hops - 1:  # how paths arrived matters no more
                break
            tie = cand == flat[key]  # the best arrivals; the lowest type and direction is remembered
            key = key[tie]
            came[key] = none
            np.minimum.at(came, key, arrive[pos[better[tie]]])
            rose[key] = True
            cells = rose.nonzero()[0]
            rose[cells] = False
        carried[order] = out
    # Per node, its best seed's path plus `second_seed` x the second best (the best taken out once).
    total_w = weights.max(axis=0)
    if n_seeds > 1:
        flat[weights.argmax(axis=0) * n_nodes + np.arange(n_nodes)] = -np.inf
        total_w += w.second_seed * weights.max(axis=0)
    keep = total_w > 0
    weight = dict(zip(compress(nodes, keep.tolist()), total_w[keep].tolist()))
    return Paths(weight, carried[:m], carried[m:])


def specificity(mentioned_by: Mapping[str, int], corpus_chunks: int) -> dict[str, float]:
    """Inverse document frequency of each entity over chunks, scaled to 0..1 (1: one chunk)."""
    n = max(corpus_chunks, max(mentioned_by.values(), default=0), 1)
    scale = math.log(n + 1)
    return {e: math.log((n + 1) / (df + 1)) / scale for e, df in mentioned_by.items()}


def type_named(entity_type: str, question: set[str]) -> bool:
    return bool(entity_type) and any(_stem(t) in question for t in _words(entity_type))


class ChunkEvidence:
    """The strongest relation each chunk states and the strongest entity it mentions."""

    def __init__(self) -> None:
        self.relation: dict[str, float] = defaultdict(float)
        self.mention: dict[str, float] = defaultdict(float)

    def states(self, chunks: Iterable[str], points: float) -> None:
        for c in chunks:
            if points > self.relation[c]:
                self.relation[c] = points

    def mentions(self, chunk: str, points: float) -> None:
        if points > self.mention[chunk]:
            self.mention[chunk] = points

    def scores(self, w: Weights) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for c, v in self.relation.items():
            out[c] += w.provenance * v
        for c, v in self.mention.items():
            out[c] += w.mention * v
        return dict(out)


def fuse(direct: Mapping[str, float], graph: Mapping[str, float], k: int, w: Weights) -> list[tuple[str, float]]:
    """The top k chunks by `direct * text + graph`, ties by id."""
    score: dict[str, float] = defaultdict(float)
    for c, v in direct.items():
        score[c] += w.direct * v
    for c, v in graph.items():
        score[c] += v
    return sorted(((c, v) for c, v in score.items() if v > 0), key=lambda cv: (-cv[1], cv[0]))[:k]
