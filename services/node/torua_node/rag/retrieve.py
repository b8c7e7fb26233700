"""`torua.rag.retrieve`: question -> text and entity matches -> paths through the graph -> ranked chunks -> context.

Multi-hop questions are the point: the chunk that answers the last hop usually shares no words with
the question, so it is found through the graph — it states a relation on a path from an entity the
question names — rather than by lexical or vector similarity. Text evidence keeps what search finds
near the top when the graph has nothing better to offer. Scoring is pure, in graphrank.py; this
module fetches what it needs from the shards, in as few rounds as the algorithm allows, all at one
read point (`router/readpoint.py`: each shard's log end is learnt once per question):

1. BM25 (statistics, then scores) and vector search over chunks, and BM25 over entity names,
   concurrently (the question is embedded meanwhile); then the matched entities' names together
   with their relations (a seed is an entity whose name the question covers, so the first hop's
   relations are among them);
2. the seeds' neighbourhood, `hops` relations deep, best first: per hop, one round for the few
   chunks stating each relation type, not read yet, whose words tell how relevant the type is, and
   one for the relations of the best-weighted entities not expanded yet (sent with the chunks'
   round when the weights cannot change which entities those are);
3. the names and types of every entity reached, and the chunks mentioning them, concurrently (with
   the last chunks' round when the weights cannot change which entities are reached);
4. the chunk rows of the top k not read already.

Eleven sequential rounds for three hops before, eight to ten now, with the same answer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from torua.chunking import approx_tokens
from torua.embedding import tokenize
from torua.model import (
    UNTYPED_RELATION,
    Consistency,
    EdgeOut,
    EntityOut,
    Hit,
    RetrievedChunk,
    RetrievedEntity,
    RetrievedRelation,
    RetrieveReply,
    RetrieveRequest,
    Tokens,
)
from torua_node.rag.graphrank import (
    ChunkEvidence,
    Paths,
    Weights,
    direct_scores,
    fuse,
    lexical_relevance,
    relation_factors,
    relation_relevance,
    seed_weights,
    specificity,
    spread,
    stating_chunks,
    stems,
    type_label,
    type_named,
)
from torua_node.rag.search import Search
from torua_node.router.client import EmbedderProvider, ShardClient, Status, by_owner, is_partial, token
from torua_node.router.graph import GraphReads
from torua_node.router.readpoint import reading
from torua_node.shard.protocol import CHUNKS, MENTIONS, ShardChunks, ShardMentions
from torua_node.storage.chunks import ChunkOut, Mention

__all__ = ["Retriever", "build_context"]

T = TypeVar("T")
Finals = tuple[list[EntityOut], list[Mention]]  # the reached entities' rows, the chunks mentioning them

EXPAND_LIMIT = 300  # entities gathered around the seeds, at most
BEAM = 10  # entities expanded per hop, the best-weighted new ones (10, 20, 30 and 60 measured alike)
CONTEXT_RELATIONS = 20
_TYPE_CACHE = 4096  # relation type labels whose vectors are kept (types repeat across questions)


@dataclass(frozen=True, slots=True)
class _Expansion:
    reached: dict[str, int]  # entity id -> hop
    edges: list[EdgeOut]  # between reached entities
    factors: np.ndarray  # what each of `edges` passes on
    paths: Paths
    rows: dict[str, tuple[ChunkOut, int]]  # chunks read on the way (stating relations), by id
    finals: asyncio.Future[Finals] | None  # the final round, when it could be asked early


class Retriever:
    def __init__(
        self, client: ShardClient, graph: GraphReads, embedder: EmbedderProvider, weights: Weights | None = None
    ) -> None:
        self.client = client
        self.graph = graph
        self.embedder = embedder
        self.search = Search(client, embedder)
        self.w = weights or Weights()
        self._type_vectors: dict[str, np.ndarray] = {}

    async def retrieve(self, req: RetrieveRequest) -> RetrieveReply:
        status: Status = {}
        with reading(self.client.log_ends):  # ten rounds or so: one log end per shard
            return await self._retrieve(req, status)

    async def _retrieve(self, req: RetrieveRequest, status: Status) -> RetrieveReply:
        w, after, level = self.w, req.after, req.consistency
        s = self.search

        async def vector_hits() -> list[Hit]:
            vec = await s.embed(req.question)
            return await s.vector_hits(vec, w.candidates, "chunks", after, status, consistency=level)

        async def entity_matches() -> tuple[list[Hit], list[EntityOut], list[EdgeOut]]:
            # The matched entities' relations come with their names: the seeds are among them, so
            # the first hop's relations need no round of their own.
            hits = await s.text_hits(req.question, w.seed_entities, "entities", after, status, consistency=level)
            ids = [h.id for h in hits]
            rows, edges = await asyncio.gather(
                self.graph.entities(ids, after, status, consistency=level),
                self.graph.edges(ids, "both", None, after, status, consistency=level),
            )
            return hits, rows, edges

        chunk_bm25, chunk_vec, (entity_bm25, matched_rows, matched_edges) = await asyncio.gather(
            s.bm25(req.question, w.candidates, "chunks", after, status, consistency=level),
            vector_hits(),
            entity_matches(),
        )
        direct = direct_scores(chunk_bm25.hits, chunk_vec, w)
        matched = {e.id: e for e in matched_rows}
        names = {i: e.name for i, e in matched.items()}
        seeds = seed_weights(entity_bm25, names, req.question, w)
        hit_shard = {h.id: h.shard for h in (*chunk_bm25.hits, *chunk_vec)}
        # What the question asks about the things it names: its words that are not capitalised
        # (leaving out entities' names measured worse: documentation names things in lower case).
        asked = stems(" ".join(t for t in req.question.split() if not t[:1].isupper()))
        first_hop = [e for e in matched_edges if e.source in seeds or e.target in seeds]
        x = await self._expand(req, seeds, names, asked, hit_shard, first_hop, set(matched), status)
        reached, edges, factors, paths = x.reached, x.edges, x.factors, x.paths
        weight = paths.weight
        if x.finals is not None:
            entity_rows, mentions = await x.finals
        else:
            entity_rows, mentions = await self._finals(list(reached), set(matched), after, status, level)
        entities = {e.id: e for e in entity_rows} | {i: matched[i] for i in reached if i in matched}
        question = stems(req.question)
        boost = {i: 1.0 + w.type_boost * type_named(e.type, question) for i, e in entities.items()}
        evidence = ChunkEvidence()
        edge_score: dict[tuple[str, str, str], float] = {}
        for e, f, fwd, bwd in zip(edges, factors.tolist(), paths.forward.tolist(), paths.backward.tolist()):
            ws, wt = weight.get(e.source, 0.0), weight.get(e.target, 0.0)
            points = max(fwd * boost.get(e.target, 1.0), bwd * boost.get(e.source, 1.0)) + w.both_ends * f * min(ws, wt)
            edge_score[(e.source, e.type, e.target)] = points
            evidence.states(e.chunks, points)
        mentioned_by: dict[str, set[str]] = defaultdict(set)
        for m in mentions:
            mentioned_by[m.entity_id].add(m.chunk_id)
        spec = specificity({e: len(c) for e, c in mentioned_by.items()}, chunk_bm25.corpus_size)
        for m in mentions:
            evidence.mentions(m.chunk_id, weight.get(m.entity_id, 0.0) * spec.get(m.entity_id, 0.0) * boost.get(m.entity_id, 1.0))
        ranked = fuse(direct, evidence.scores(w), req.k, w)
        located = {m.chunk_id: m.document_id for m in mentions}
        # Rows read during the expansion (chunks stating relations) are not asked for again.
        chunks = {c: x.rows[c] for c, _ in ranked if c in x.rows}
        missing = [c for c, _ in ranked if c not in chunks]
        if missing:
            chunks |= await self._chunks(missing, located, hit_shard, after, status, level)
        top_edges = sorted(edges, key=lambda e: (-edge_score[(e.source, e.type, e.target)], e.source, e.type, e.target))
        return self._reply(req, ranked, chunks, entities, reached, top_edges[:CONTEXT_RELATIONS], status)

    async def _finals(
        self, reached: list[str], matched: set[str], after: Tokens, status: Status, level: Consistency
    ) -> Finals:
        """The rows of the entities reached (the matched ones' are in hand) and the chunks mentioning
        them, concurrently."""
        rows, mentions = await asyncio.gather(
            self.graph.entities([i for i in reached if i not in matched], after, status, consistency=level),
            self._mentions(reached, after, status, level),
        )
        return rows, mentions

    async def _expand(
        self,
        req: RetrieveRequest,
        seeds: dict[str, float],
        names: dict[str, str],
        asked: set[str],
        hit_shard: dict[str, int],
        first_hop: list[EdgeOut],
        matched: set[str],
        status: Status,
    ) -> _Expansion:
        """The seeds' neighbourhood, guided by the question: every relation of the frontier is
        kept, but only the `BEAM` best-weighted entities not expanded yet are expanded next, so a
        hub's hundred neighbours do not crowd out the path the question describes (breadth-first
        order would cut the last hop by id). Weights count paths of up to `hops` relations at every
        round, so an entity first reached through a weak seed is expanded once a strong path
        through it shows. Returns the entities reached
        (with their hop), the relations between them, what each relation passes on, and every
        entity's weight. A relation type's relevance is read from its label and from the words of
        a few chunks stating it (fetched in the same round as the label's embedding).

        `first_hop`: the seeds' relations, read already. When what a round reads cannot change what
        comes next (every entity found fits under EXPAND_LIMIT and the ones waiting fit in the
        beam), the next round — the next hop's relations, or the final rows and mentions — is sent
        with it rather than after it."""
        after, level = req.after, req.consistency
        reached: dict[str, int] = dict.fromkeys(seeds, 0)
        rows: dict[str, tuple[ChunkOut, int]] = {}
        found: dict[tuple[str, str, str], EdgeOut] = {}
        frontier = sorted(seeds)
        expanded: set[str] = set()
        edges: list[EdgeOut] = []
        factors = np.zeros(0)
        named = {t for i in seeds for t in tokenize(names.get(i, ""))}
        texts: dict[str, str] = {}
        words: asyncio.Future[np.ndarray] | None = None
        hop_edges: asyncio.Future[list[EdgeOut]] | None = None  # the next hop's relations, asked early
        finals: asyncio.Future[Finals] | None = None
        finals_of: set[str] = set()
        for hop in range(1, req.hops + 1):
            if not frontier:
                break
            if hop == 1:
                hop_found = first_hop
            elif hop_edges is not None:
                hop_found, hop_edges = await hop_edges, None
            else:
                hop_found = await self.graph.edges(frontier, "both", None, after, status, consistency=level)
            for e in hop_found:
                found[(e.source, e.type, e.target)] = e
            expanded.update(frontier)
            edges = [e for _, e in sorted(found.items())]
            if words is None and edges:
                # On a thread, during the round below.
                words = _spawn(self._word_vectors(req.question, named))
            # Re-chosen every round from all relations seen (freezing each type's first choice
            # measured worse); only chunks not read yet are fetched.
            stated = stating_chunks(edges, self.w.stating_chunks, UNTYPED_RELATION)
            unread = sorted({c for cs in stated.values() for c in cs} - rows.keys())
            new = {x for e in edges for x in (e.source, e.target) if x not in reached}
            room = max(0, EXPAND_LIMIT - len(reached))
            if len(new) <= room:
                # Every entity found is reached, whatever the weights: what follows may be asked now.
                ahead = [*reached, *sorted(new)]
                waiting = [x for x in ahead if x not in expanded]
                if len(waiting) <= BEAM and waiting and hop < req.hops:
                    ask = sorted(waiting)
                    hop_edges = _spawn(self.graph.edges(ask, "both", None, after, status, consistency=level))
                elif len(waiting) <= BEAM or hop == req.hops:
                    finals = _spawn(self._finals(ahead, matched, after, status, level))
                    finals_of = set(ahead)
            labels, read = await asyncio.gather(
                self._relevance(words, edges), self._chunks(unread, {}, hit_shard, after, status, level)
            )
            rows.update(read)
            texts.update((c, row.text) for c, (row, _) in read.items())
            lexical = lexical_relevance(stated, texts, asked)
            relevance = {t: max(labels.get(t, 0.0), lexical.get(t, 0.0)) for t in labels.keys() | lexical.keys()}
            factors = relation_factors(edges, relevance, self.w)
            weight = spread(seeds, edges, factors, req.hops, self.w).weight
            best = sorted(new, key=lambda x: (-weight.get(x, 0.0), x))[:room]
            reached.update(dict.fromkeys(best, hop))
            # Best first: the next round expands the best-weighted entities not expanded yet, also
            # those reached earlier whose weight rose once a longer path through them was seen.
            waiting = [x for x in reached if x not in expanded]
            frontier = sorted(waiting, key=lambda x: (-weight.get(x, 0.0), x))[:BEAM]
        if finals is not None and finals_of != set(reached):
            # Cannot happen (the rounds sent early were sent only when the weights could not change
            # them); kept so that a mistake costs a round, not a wrong answer.
            finals.cancel()
            finals = None
        kept = [(e, f) for e, f in zip(edges, factors.tolist()) if e.source in reached and e.target in reached]
        kept_edges, kept_factors = [e for e, _ in kept], np.array([f for _, f in kept])
        paths = spread(seeds, kept_edges, kept_factors, req.hops, self.w)
        return _Expansion(reached, kept_edges, kept_factors, paths, rows, finals)

    async def _word_vectors(self, question: str, named: set[str]) -> np.ndarray:
        """The question's words as the cluster's embedder sees them, once per question (stop words
        too: "where" is close to BORN_IN), but not the words of the seeds' names ("Vosmi Works" says
        nothing about WORKS_FOR)."""
        words = [t for t in dict.fromkeys(tokenize(question)) if t not in named]
        return await asyncio.to_thread(self.embedder().embed, words) if words else np.zeros((0, self.embedder.dim))

    async def _relevance(
        self, word_vectors: Awaitable[np.ndarray] | None, edges: list[EdgeOut]
    ) -> dict[str, float]:
        """How close each relation type is in meaning to a word of the question, 0..1. Type vectors
        are cached across questions, so only types not seen before cost an embedding call."""
        types = sorted({e.type for e in edges})
        if not types or word_vectors is None:
            return {}
        words = await word_vectors
        if len(words) == 0:
            return {}
        if len(self._type_vectors) + len(types) > _TYPE_CACHE:
            self._type_vectors.clear()
        new = [t for t in types if t not in self._type_vectors]
        if new:
            rows = await asyncio.to_thread(self.embedder().embed, [type_label(t) for t in new])
            self._type_vectors.update(zip(new, rows))
        relevance = relation_relevance(np.stack([self._type_vectors[t] for t in types]), words)
        return {t: float(r) for t, r in zip(types, relevance)}

    async def _mentions(
        self, entity_ids: list[str], after: Tokens, status: Status, consistency: Consistency
    ) -> list[Mention]:
        """Chunks mentioning the entities, asked of the entities' owners (mentions are stored at both ends)."""
        groups = by_owner(self.client, entity_ids)
        requests = {s: ShardMentions(entity_ids=ids, after=token(after, s), consistency=consistency) for s, ids in groups.items()}
        replies = await self.client.fan_out(MENTIONS, requests, status)
        return sorted((m for rep in replies.values() for m in rep.mentions), key=lambda m: (m.chunk_id, m.entity_id))

    async def _chunks(
        self,
        ids: list[str],
        located: dict[str, str],
        hit_shard: dict[str, int],
        after: Tokens,
        status: Status,
        consistency: Consistency,
    ) -> dict[str, tuple[ChunkOut, int]]:
        """Chunk rows from their owning shards (a chunk lives with its document); a chunk known only
        by id is asked of every shard."""
        n = self.client.num_shards
        groups: dict[int, list[str]] = defaultdict(list)
        for chunk_id in ids:
            if chunk_id in located:
                groups[self.client.owner(located[chunk_id])].append(chunk_id)
            elif chunk_id in hit_shard:
                groups[hit_shard[chunk_id]].append(chunk_id)
            else:
                for s in range(n):
                    groups[s].append(chunk_id)
        requests = {s: ShardChunks(ids=g, after=token(after, s), consistency=consistency) for s, g in groups.items()}
        replies = await self.client.fan_out(CHUNKS, requests, status)
        return {c.id: (c, s) for s, reply in replies.items() for c in reply.chunks}

    def _reply(
        self,
        req: RetrieveRequest,
        ranked: list[tuple[str, float]],
        chunks: dict[str, tuple[ChunkOut, int]],
        entities: dict[str, EntityOut],
        reached: dict[str, int],
        edges: list[EdgeOut],
        status: Status,
    ) -> RetrieveReply:
        owner = self.client.owner
        picked = [
            RetrievedChunk(
                id=c.id, document_id=c.document_id, text=c.text, score=round(score, 6), shard=s, entities=c.entities
            )
            for cid, score in ranked
            if cid in chunks
            for c, s in [chunks[cid]]
        ]
        names = {i: e.name or i for i, e in entities.items()}
        context, used = build_context(picked, edges, names, req.token_budget)
        on_paths = {e.source for e in edges} | {e.target for e in edges} | {i for i, h in reached.items() if h == 0}
        return RetrieveReply(
            context=context,
            chunks=picked,
            entities=[
                RetrievedEntity(id=e.id, name=e.name, type=e.type, hop=reached[e.id], shard=owner(e.id))
                for e in sorted(entities.values(), key=lambda e: (reached[e.id], e.id))
                if e.id in on_paths
            ],
            relations=[
                RetrievedRelation(
                    source=e.source, target=e.target, type=e.type, weight=e.weight, chunks=e.chunks, shard=owner(e.source)
                )
                for e in edges
            ],
            partial=is_partial(status),
            shards=status,
            tokens_used=used,
        )


def build_context(chunks: list[RetrievedChunk], edges: list[EdgeOut], names: dict[str, str], budget: int) -> tuple[str, int]:
    """Passages first (best first), then the relations on the paths, as long as the budget allows."""
    parts, used = _fit((f"[{c.id}] {c.text}" for c in chunks), budget, 0)
    lines = (f"- {names.get(e.source, e.source)} {e.type} {names.get(e.target, e.target)}" for e in edges)
    facts, used = _fit(lines, budget, used)
    if facts:
        parts.append("Relations:\n" + "\n".join(facts))
    return "\n\n".join(parts), used


def _fit(texts: Iterable[str], budget: int, used: int) -> tuple[list[str], int]:
    """The texts that still fit the token budget, in order (a long one is skipped, not cut)."""
    kept: list[str] = []
    for text in texts:
        cost = approx_tokens(text)
        if used + cost <= budget:
            kept.append(text)
            used += cost
    return kept, used


def _spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """A round sent ahead of its turn; its error is raised where it is awaited (or dropped with the
    request, never reported as unretrieved)."""
    fut = asyncio.ensure_future(coro)
    fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())
    return fut
