"""`torua.rag.retrieve`: question -> text and entity matches -> paths through the graph -> ranked chunks -> context.

Multi-hop questions are the point: the chunk that answers the last hop usually shares no words with
the question, so it is found through the graph — it states a relation on a path from an entity the
question names — rather than by lexical or vector similarity. Text evidence keeps what search finds
near the top when the graph has nothing better to offer. Scoring is pure, in graphrank.py; this
module fetches what it needs from the shards, in as few rounds as the algorithm allows:

1. BM25 and vector search over chunks and BM25 over entity names, concurrently, then the matched
   entities' names (a seed is an entity whose name the question covers);
2. the seeds' neighbourhood, `hops` relations deep (one fan-out round per hop, expanding only the
   best-weighted new entities);
3. the names and types of every entity reached, and the chunks mentioning them, concurrently;
4. the chunk rows of the top k.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from torua.chunking import approx_tokens
from torua.embedding import tokenize
from torua.model import (
    Consistency,
    EdgeOut,
    EntityOut,
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
    relation_factors,
    relation_relevance,
    seed_weights,
    specificity,
    spread,
    stems,
    type_label,
    type_named,
)
from torua_node.rag.search import Search
from torua_node.router.client import EmbedderProvider, ShardClient, Status, by_owner, is_partial, token
from torua_node.router.graph import GraphReads
from torua_node.shard.protocol import CHUNKS, MENTIONS, ShardChunks, ShardMentions
from torua_node.storage.chunks import ChunkOut, Mention

__all__ = ["Retriever", "build_context"]

EXPAND_LIMIT = 300  # entities gathered around the seeds, at most
BEAM = 10  # entities expanded per hop, the best-weighted new ones (10, 20, 30 and 60 measured alike)
CONTEXT_RELATIONS = 20
_TYPE_CACHE = 4096  # relation type labels whose vectors are kept (types repeat across questions)


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
        w, after, level = self.w, req.after, req.consistency
        s = self.search
        vec = await s.embed(req.question)
        chunk_bm25, chunk_vec, entity_bm25 = await asyncio.gather(
            s.bm25(req.question, w.candidates, "chunks", after, status, consistency=level),
            s.vector_hits(vec, w.candidates, "chunks", after, status, consistency=level),
            s.text_hits(req.question, w.seed_entities, "entities", after, status, consistency=level),
        )
        direct = direct_scores(chunk_bm25.hits, chunk_vec, w)
        matched = {e.id: e for e in await self.graph.entities([h.id for h in entity_bm25], after, status, consistency=level)}
        seeds = seed_weights(entity_bm25, {i: e.name for i, e in matched.items()}, req.question, w)
        reached, edges, factors, paths = await self._expand(req, seeds, after, status)
        weight = paths.weight
        entity_rows, mentions = await asyncio.gather(  # the seeds' rows are in hand already
            self.graph.entities([i for i in reached if i not in matched], after, status, consistency=level),
            self._mentions(list(reached), after, status, level),
        )
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
        hit_shard = {h.id: h.shard for h in (*chunk_bm25.hits, *chunk_vec)}
        chunks = await self._chunks([c for c, _ in ranked], located, hit_shard, after, status, level)
        top_edges = sorted(edges, key=lambda e: (-edge_score[(e.source, e.type, e.target)], e.source, e.type, e.target))
        return self._reply(req, ranked, chunks, entities, reached, top_edges[:CONTEXT_RELATIONS], status)

    async def _expand(
        self, req: RetrieveRequest, seeds: dict[str, float], after: Tokens, status: Status
    ) -> tuple[dict[str, int], list[EdgeOut], np.ndarray, Paths]:
        """The seeds' neighbourhood, one fan-out round per hop, guided by the question: every
        relation of the frontier is kept, but only the `BEAM` best-weighted new entities are
        expanded further, so a hub's hundred neighbours do not crowd out the path the question
        describes (breadth-first order would cut the last hop by id). Returns the entities reached
        (with their hop), the relations between them, what each relation passes on, and every
        entity's weight."""
        reached: dict[str, int] = dict.fromkeys(seeds, 0)
        found: dict[tuple[str, str, str], EdgeOut] = {}
        frontier = sorted(seeds)
        edges: list[EdgeOut] = []
        factors = np.zeros(0)
        words: np.ndarray | None = None
        for hop in range(1, req.hops + 1):
            if not frontier:
                break
            for e in await self.graph.edges(frontier, "both", None, after, status, consistency=req.consistency):
                found[(e.source, e.type, e.target)] = e
            edges = [e for _, e in sorted(found.items())]
            if words is None and edges:
                words = await self._word_vectors(req.question)
            factors = relation_factors(edges, await self._relevance(words, edges), self.w)
            weight = spread(seeds, edges, factors, hop, self.w).weight
            new = {x for e in edges for x in (e.source, e.target) if x not in reached}
            best = sorted(new, key=lambda x: (-weight.get(x, 0.0), x))[: max(0, EXPAND_LIMIT - len(reached))]
            reached.update(dict.fromkeys(best, hop))
            frontier = best[:BEAM]
        kept = [(e, f) for e, f in zip(edges, factors.tolist()) if e.source in reached and e.target in reached]
        kept_edges, kept_factors = [e for e, _ in kept], np.array([f for _, f in kept])
        return reached, kept_edges, kept_factors, spread(seeds, kept_edges, kept_factors, req.hops, self.w)

    async def _word_vectors(self, question: str) -> np.ndarray:
        """The question's words as the cluster's embedder sees them, once per question (stop words
        too: "where" is close to BORN_IN)."""
        words = list(dict.fromkeys(tokenize(question)))
        return await asyncio.to_thread(self.embedder().embed, words) if words else np.zeros((0, self.embedder.dim))

    async def _relevance(self, words: np.ndarray | None, edges: list[EdgeOut]) -> dict[str, float]:
        """How close each relation type is in meaning to a word of the question, 0..1. Type vectors
        are cached across questions, so only types not seen before cost an embedding call."""
        types = sorted({e.type for e in edges})
        if not types or words is None or len(words) == 0:
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
