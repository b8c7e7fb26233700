"""`torua.rag.retrieve`: question -> seeds -> k-hop expansion -> ranked chunks -> context.

Multi-hop questions are the point: the chunk that answers the last hop usually shares no words with
the question, so it is found through the graph — it mentions an entity reached from the seeds, and
it states a relation on the path — rather than by lexical or vector similarity. Scoring is in
graphrank.py; this module fetches what it needs from the shards.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

from torua.chunking import approx_tokens
from torua.model import (
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
    ChunkScores,
    Weights,
    entity_relevance,
    relation_score,
    seed_weights,
    spread,
    stems,
)
from torua_node.rag.ranking import rrf
from torua_node.rag.search import Search
from torua_node.router.client import EmbedderProvider, ShardClient, Status, by_owner, is_partial, token
from torua_node.router.graph import GraphReads
from torua_node.shard.protocol import CHUNKS, MENTIONS, ShardChunks, ShardMentions
from torua_node.storage.chunks import ChunkOut, Mention

__all__ = ["Retriever", "build_context"]

SEED_DEPTH = 20
SEED_ENTITIES = 5
EXPAND_LIMIT = 300
CONTEXT_RELATIONS = 20


class Retriever:
    def __init__(
        self, client: ShardClient, graph: GraphReads, embedder: EmbedderProvider, weights: Weights | None = None
    ) -> None:
        self.client = client
        self.graph = graph
        self.search = Search(client, embedder)
        self.w = weights or Weights()

    async def retrieve(self, req: RetrieveRequest) -> RetrieveReply:
        status: Status = {}
        direct, entity_hits = await self._search(req, status)
        seeds = seed_weights(entity_hits)
        found = await self.graph.traverse(
            list(seeds), req.hops, "both", None, EXPAND_LIMIT, req.after, status, consistency=req.consistency
        )
        reached, edges = found.reached, found.edges
        question = stems(req.question)
        weight = spread(seeds, edges, req.hops, question, self.w)
        entities = {e.id: e for e in await self.graph.entities(list(reached), req.after, status, consistency=req.consistency)}
        scores = ChunkScores()
        best = direct[0].score if direct else 1.0
        for hit in direct:
            scores.add(hit.id, self.w.direct * hit.score / best)
        mentions = await self._mentions(list(reached), req.after, status, req.consistency)
        for m in mentions:
            ent = entities.get(m.entity_id)
            etype = ent.type if ent else ""
            scores.add(m.chunk_id, self.w.mention * entity_relevance(weight.get(m.entity_id, 0.0), etype, question, self.w))
        rel_scores = {(e.source, e.type, e.target): relation_score(e, weight, question, self.w) for e in edges}
        for e in edges:
            for chunk_id in e.chunks:
                scores.add(chunk_id, self.w.provenance * rel_scores[(e.source, e.type, e.target)])
        ranked = scores.ranked(req.k)
        located = {m.chunk_id: m.document_id for m in mentions}
        hit_shard = {h.id: h.shard for h in direct}
        chunks = await self._chunks([c for c, _ in ranked], located, hit_shard, req.after, status, req.consistency)
        top_edges = sorted(edges, key=lambda e: (-rel_scores[(e.source, e.type, e.target)], e.source, e.type, e.target))
        return self._reply(req, ranked, chunks, entities, reached, top_edges[:CONTEXT_RELATIONS], status)

    async def _search(self, req: RetrieveRequest, status: Status) -> tuple[list[Hit], list[Hit]]:
        s, after, level = self.search, req.after, req.consistency
        vec = await s.embed(req.question)
        chunk_bm25, chunk_vec, entity_bm25 = await asyncio.gather(
            s.text_hits(req.question, SEED_DEPTH, "chunks", after, status, consistency=level),
            s.vector_hits(vec, SEED_DEPTH, "chunks", after, status, consistency=level),
            s.text_hits(req.question, SEED_ENTITIES, "entities", after, status, consistency=level),
        )
        return rrf([chunk_bm25, chunk_vec], SEED_DEPTH), entity_bm25

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
