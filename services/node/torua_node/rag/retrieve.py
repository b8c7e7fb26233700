"""`torua.rag.retrieve`: question -> text and entity matches -> paths through the graph -> ranked chunks -> context.

Multi-hop questions are the point: the chunk that answers the last hop usually shares no words with
the question, so it is found through the graph — it states a relation on a path from an entity the
question names — rather than by lexical or vector similarity. Text evidence keeps what search finds
near the top when the graph has nothing better to offer. Scoring is pure, in graphrank.py; this
module fetches what it needs from the shards, in as few rounds as the algorithm allows, all at one
read point (`router/readpoint.py`: each shard's log end is learnt once per question):

1. BM25 (statistics, then scores) and vector search over chunks, and BM25 over entity names,
   concurrently (the question is embedded meanwhile); the entity scores come with the names and
   relations of the matches the question names (`ShardText.graph_edges`: a seed is an entity whose
   name the question covers, so the first hop's relations are among them), each shard sending
   those of its best few (`GRAPH_SHARE`) — a shard holding more of the top k costs a round;
2. the seeds' neighbourhood, `hops` relations deep, best first: per hop, one round in which the
   shards holding the few chunks stating each relation type count how many of the question's word
   stems each one uses (`chunk_stems`, from their text indexes: no chunk is read from the database),
   which tells how relevant the type is, and one for the relations of the best-weighted entities not
   expanded yet — sent with the counts' round when the weights cannot change which entities those
   are, and otherwise asked beside it for a guess of them (`AHEAD` entities, by the weights the last
   round left carried one relation further), so that only the entities the guess missed cost a
   round of their own (none, most often);
3. the names and types of every entity reached, and the chunks mentioning them, concurrently — sent
   with the last hop's counts' round, for every entity that hop may reach (the ones it does not
   reach are dropped from the answer);
4. the chunk rows of the top k, from the shards holding them: those of the top k by text and
   relations alone (most often the top k) as soon as the weights are known, beside the final round
   (and those the entities' types lift, once they are known), any others after the mentions.

Eleven sequential rounds for three hops before, five to eight now, with the same answer; every one
is answered from the replicas' memory (graph view, chunk view, text and vector indexes), none reads
a shard's database.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from torua.chunking import approx_tokens
from torua.embedding import embed_soon, tokenize
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
from torua.tasks import retrieved
from torua_node.rag.graphrank import (
    STEM_LENGTH,
    STEM_MIN_WORD,
    ChunkEvidence,
    Paths,
    Weights,
    direct_scores,
    fuse,
    lexical_relevance_of,
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
from torua_node.router.fanout import answered
from torua_node.router.graph import EDGES_PER_SHARD, GraphReads
from torua_node.router.readpoint import every_shard, reading
from torua_node.shard.protocol import (
    CHUNK_STEMS,
    CHUNKS,
    MENTIONS,
    ShardChunks,
    ShardChunkStems,
    ShardMentions,
)
from torua_node.storage.chunks import ChunkOut, Mention

__all__ = ["Retriever", "build_context"]

T = TypeVar("T")
_ChunkRows = dict[str, tuple[ChunkOut, int]]  # chunk id -> its row and the shard that sent it

EXPAND_LIMIT = 300  # entities gathered around the seeds, at most
BEAM = 10  # entities expanded per hop, the best-weighted new ones (10, 20, 30 and 60 measured alike)
CONTEXT_RELATIONS = 20
# The last hop's final round is asked for every entity it may reach, at most this many, while the
# hop's relevance round runs; the ones not reached are dropped from its answer.
AHEAD_LIMIT = 4 * EXPAND_LIMIT
# While a hop's relevance round is out, the relations of the entities the next frontier most likely
# holds are asked for beside it: this many, the best by the weights before that round's answer.
AHEAD = 2 * BEAM
# Each shard sends the rows and relations of its best GRAPH_SHARE x (its share of the top k) + 1
# entity matches with their scores: a shard holding more of the top k costs a round.
GRAPH_SHARE = 2
_TYPE_CACHE = 4096  # relation type labels whose vectors are kept (types repeat across questions)


@dataclass(frozen=True, slots=True)
class _Finals:
    """The final round, sent: the rows of the entities `of` (the matched ones' are in hand), and the
    chunks mentioning them with whether every shard's answer was whole (under the request's limit)."""

    of: set[str]
    rows: asyncio.Future[list[EntityOut]]
    mentions: asyncio.Future[tuple[list[Mention], bool]]

    def cancel(self) -> None:
        self.rows.cancel()
        self.mentions.cancel()


@dataclass(frozen=True, slots=True)
class _Expansion:
    reached: dict[str, int]  # entity id -> hop
    edges: list[EdgeOut]  # between reached entities
    factors: np.ndarray  # what each of `edges` passes on
    paths: Paths
    finals: _Finals | None  # the final round, when it could be asked early: for all entities reached, maybe more
    holders: dict[str, int]  # chunks stating relations -> the shard holding each


class _EdgesAhead:
    """Relations already read this request, per entity (all of each one's, both directions), from
    rounds sent ahead of their hop on a guess of its frontier: a frontier among them needs no round
    of its own, and one partly among them asks only for the rest. An entity whose shard failed to
    answer such a round is not known (its hop asks again, and only then can it make the reply
    partial)."""

    def __init__(self) -> None:
        self._of: dict[str, list[EdgeOut]] = {}
        self._asked: list[tuple[list[str], Status, asyncio.Future[list[EdgeOut]]]] = []

    def ask(self, ids: list[str], fetch: Callable[[list[str], Status], Coroutine[Any, Any, list[EdgeOut]]]) -> None:
        new = [i for i in ids if i not in self._of]
        if new:
            status: Status = {}
            self._asked.append((new, status, _spawn(fetch(new, status))))

    async def split(self, frontier: list[str], owner: Callable[[str], int], status: Status) -> tuple[list[EdgeOut], list[str]]:
        """The relations of the frontier's entities already read, and the entities still to ask."""
        wanted = set(frontier)
        for ids, asked_status, fetch in self._asked:
            if wanted.isdisjoint(ids):
                continue  # its answer is kept for later when it comes; not waited for now
            edges = await fetch
            fine = {i for i in ids if (st := asked_status.get(str(owner(i)))) is not None and st.ok}
            of: dict[str, list[EdgeOut]] = {i: [] for i in fine}
            for e in edges:
                for end in {e.source, e.target} & fine:
                    of[end].append(e)
            self._of.update(of)
            for shard in {owner(i) for i in fine & wanted}:
                answered(status, shard, asked_status[str(shard)].applied_seq)
        self._asked = [a for a in self._asked if not a[2].done() or wanted.isdisjoint(a[0])]
        known = [e for i in frontier if i in self._of for e in self._of[i]]
        return known, [i for i in frontier if i not in self._of]

    def cancel(self) -> None:
        for _, _, fetch in self._asked:
            fetch.cancel()


class _Rows:
    """Chunk rows asked for ahead of the ranking (each chunk once), on guesses of the top k: any of
    the top k not among them is read after it."""

    def __init__(self, fetch: Callable[[list[str], dict[str, int]], Coroutine[Any, Any, _ChunkRows]]) -> None:
        self._fetch = fetch
        self.asked: set[str] = set()
        self._fetches: list[asyncio.Future[_ChunkRows]] = []

    def ask(self, ids: list[str], holders: dict[str, int]) -> None:
        """The rows of the chunks `ids` not asked for yet, from `holders` (chunk -> its shard)."""
        new = [c for c in ids if c not in self.asked]
        if new:
            self.asked.update(new)
            self._fetches.append(_spawn(self._fetch(new, holders)))

    async def read(self) -> _ChunkRows:
        rows: _ChunkRows = {}
        for fetch in self._fetches:
            rows |= await fetch
        return rows


class _Stated:
    """What the relations kept pass on to the chunks stating them: per relation, the most that
    reached it along a path from either end (times the far end's boost, for the type the question
    names) plus its weaker end's weight (`Weights.both_ends`). Computed for all relations at once."""

    def __init__(self, edges: list[EdgeOut], factors: np.ndarray, paths: Paths, w: Weights) -> None:
        weight = paths.weight
        self.edges = edges
        self.forward, self.backward = paths.forward, paths.backward
        ends = np.array([(weight.get(e.source, 0.0), weight.get(e.target, 0.0)) for e in edges]).reshape(-1, 2)
        self.both = w.both_ends * factors * np.minimum(ends[:, 0], ends[:, 1])
        self.points = np.maximum(self.forward, self.backward) + self.both  # every boost 1

    def evidence(self, boost: dict[str, float] | None) -> ChunkEvidence:
        """The chunks' relation evidence, with these boosts (None: every one 1); the points stay
        with the relations for `top`."""
        if boost is not None:
            target = np.array([boost.get(e.target, 1.0) for e in self.edges])
            source = np.array([boost.get(e.source, 1.0) for e in self.edges])
            self.points = np.maximum(self.forward * target, self.backward * source) + self.both
        evidence = ChunkEvidence()
        for e, points in zip(self.edges, self.points.tolist()):
            evidence.states(e.chunks, points)
        return evidence

    def top(self, n: int) -> list[EdgeOut]:
        """The `n` relations with the most points (of the last `evidence`), ties by (source, type, target)."""
        points = self.points.tolist()
        order = sorted(range(len(points)), key=lambda i: (-points[i], self.edges[i].source, self.edges[i].type, self.edges[i].target))
        return [self.edges[i] for i in order[:n]]


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
        # Ten rounds or so at one read point: every shard's log end learnt by one look, at once (the
        # first round reads every shard; learnt shard by shard, those asked after the look began
        # would wait for a second one).
        with reading(self.client.log_ends, prefetch=every_shard(self.client.num_shards, req.consistency)):
            return await self._retrieve(req, status)

    async def _retrieve(self, req: RetrieveRequest, status: Status) -> RetrieveReply:
        w, after, level = self.w, req.after, req.consistency
        s = self.search

        async def vector_hits() -> list[Hit]:
            vec = await s.embed(req.question)
            return await s.vector_hits(vec, w.candidates, "chunks", after, status, consistency=level)

        async def entity_matches() -> tuple[list[Hit], list[EntityOut], list[EdgeOut]]:
            # The rows and relations of the matched entities the question names come with their
            # BM25 scores (each shard sends those of its best few): the seeds are among them (the
            # others cannot seed: `name_coverage`), so neither the seeds' names nor the first hop's
            # relations need a round of their own — unless a shard held more of the top k than the
            # few it sent (`GRAPH_SHARE`).
            k, n = w.seed_entities, self.client.num_shards
            found = await s.bm25(
                req.question, k, "entities", after, status, consistency=level, graph_edges=EDGES_PER_SHARD,
                graph_named=max(0.0, w.min_coverage), graph_top=min(k, -(-GRAPH_SHARE * k // n) + 1),
            )
            rows, edges = list(found.rows or []), found.edges
            if found.unsent or edges is None:
                unsent = found.unsent
                more_rows, more_edges = await asyncio.gather(
                    self.graph.entities(unsent, after, status, consistency=level),
                    self.graph.edges(
                        unsent if edges is not None else [*(e.id for e in rows), *unsent],
                        "both", None, after, status, consistency=level,
                    ),
                )
                rows += more_rows
                edges = more_edges if edges is None else edges + more_edges
            return found.hits, rows, edges

        first_round = asyncio.gather(
            s.bm25(req.question, w.candidates, "chunks", after, status, consistency=level),
            vector_hits(),
            entity_matches(),
        )
        # The question's words as the cluster's embedder sees them, for the relation types' relevance
        # (graph expansion): embedded once the first round is out, not after it comes back.
        question_words = _spawn(self._question_words(req.question))
        chunk_bm25, chunk_vec, (entity_bm25, matched_rows, matched_edges) = await first_round
        direct = direct_scores(chunk_bm25.hits, chunk_vec, w)
        matched = {e.id: e for e in matched_rows}
        names = {i: e.name for i, e in matched.items()}
        seeds = seed_weights(entity_bm25, names, req.question, w, chunk_bm25.idf, chunk_bm25.corpus_size)
        hit_shard = {h.id: h.shard for h in (*chunk_bm25.hits, *chunk_vec)}
        # What the question asks about the things it names: its words that are not capitalised
        # (leaving out entities' names measured worse: documentation names things in lower case).
        asked = stems(" ".join(t for t in req.question.split() if not t[:1].isupper()))
        first_hop = [e for e in matched_edges if e.source in seeds or e.target in seeds]
        x = await self._expand(req, seeds, names, asked, hit_shard, first_hop, set(matched), question_words, status)
        reached, edges, factors, paths = x.reached, x.edges, x.factors, x.paths
        weight = paths.weight
        finals = x.finals or self._finals(list(reached), set(matched), after, status, level)
        holders = x.holders | hit_shard
        # What each relation's chunks get as evidence, before the entities' types are known (every
        # boost 1): most often it is final, and the top k by text and relations alone most often the
        # top k, so the rows of those whose shard is known are asked for now, beside the final round.
        rows = _Rows(lambda ids, holders: self._chunks(ids, {}, holders, after, status, level))
        stated = _Stated(edges, factors, paths, w)
        unboosted = stated.evidence(None)
        rows.ask([c for c, _ in fuse(direct, unboosted.scores(w), req.k, w) if c in holders], holders)
        # Asked for more entities than were reached, maybe: the reached ones' part (an entity's
        # answer does not depend on the others asked with it, unless mentions were cut at the limit).
        entity_rows = [e for e in await finals.rows if e.id in reached]
        entities = {e.id: e for e in entity_rows} | {i: matched[i] for i in reached if i in matched}
        question = stems(req.question)
        named: dict[str, bool] = {}  # per entity type
        boost: dict[str, float] = {}
        for i, e in entities.items():
            if e.type not in named:
                named[e.type] = type_named(e.type, question)
            boost[i] = 1.0 + w.type_boost * named[e.type]
        if any(b != 1.0 for b in boost.values()):
            # The question names a type some entities have: the relations into them count more.
            evidence = stated.evidence(boost)
            rows.ask([c for c, _ in fuse(direct, evidence.scores(w), req.k, w) if c in holders], holders)
        else:
            evidence = unboosted
        mentions, whole = await finals.mentions
        if whole or finals.of == set(reached):
            mentions = [m for m in mentions if m.entity_id in reached]
        else:
            mentions, _ = await self._mentions(list(reached), after, status, level)
        mentioned_by: dict[str, set[str]] = defaultdict(set)
        for m in mentions:
            mentioned_by[m.entity_id].add(m.chunk_id)
        spec = specificity({e: len(c) for e, c in mentioned_by.items()}, chunk_bm25.corpus_size)
        for m in mentions:
            evidence.mentions(m.chunk_id, weight.get(m.entity_id, 0.0) * spec.get(m.entity_id, 0.0) * boost.get(m.entity_id, 1.0))
        ranked = fuse(direct, evidence.scores(w), req.k, w)
        located = {m.chunk_id: m.document_id for m in mentions}
        chunks = await rows.read()
        missing = [c for c, _ in ranked if c not in chunks]
        if missing:
            chunks |= await self._chunks(missing, located, holders, after, status, level)
        return self._reply(req, ranked, chunks, entities, reached, stated.top(CONTEXT_RELATIONS), status)

    def _finals(
        self, reached: list[str], matched: set[str], after: Tokens, status: Status, level: Consistency
    ) -> _Finals:
        """Send the final round: the rows of the entities reached and the chunks mentioning them,
        concurrently."""
        return _Finals(
            set(reached),
            _spawn(self.graph.entities([i for i in reached if i not in matched], after, status, consistency=level)),
            _spawn(self._mentions(reached, after, status, level)),
        )

    async def _expand(
        self,
        req: RetrieveRequest,
        seeds: dict[str, float],
        names: dict[str, str],
        asked: set[str],
        hit_shard: dict[str, int],
        first_hop: list[EdgeOut],
        matched: set[str],
        question_words: asyncio.Future[tuple[list[str], np.ndarray]],
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
        uses: dict[str, int] = {}  # stating chunk -> question stems it uses
        holders: dict[str, int] = {}  # stating chunk -> the shard holding it
        read: set[str] = set()  # stating chunks asked about
        found: dict[tuple[str, str, str], EdgeOut] = {}
        frontier = sorted(seeds)
        expanded: set[str] = set()
        edges: list[EdgeOut] = []
        factors = np.zeros(0)
        paths: Paths | None = None
        weight: dict[str, float] = dict(seeds)  # the entities' weights as the last round left them
        named = {t for i in seeds for t in tokenize(names.get(i, ""))}
        stem_list = sorted(asked)
        words: asyncio.Future[np.ndarray] | None = None
        hop_edges: asyncio.Future[list[EdgeOut]] | None = None  # the next hop's relations, asked early
        guessed = _EdgesAhead()  # relations asked on a guess of the next frontier
        finals: _Finals | None = None
        for hop in range(1, req.hops + 1):
            if not frontier:
                break
            if hop == 1:
                hop_found = first_hop
            elif hop_edges is not None:
                hop_found, hop_edges = await hop_edges, None
            else:
                hop_found, rest = await guessed.split(frontier, self.client.owner, status)
                if rest:
                    hop_found += await self.graph.edges(rest, "both", None, after, status, consistency=level)
            for e in hop_found:
                found[(e.source, e.type, e.target)] = e
            expanded.update(frontier)
            edges = [e for _, e in sorted(found.items())]
            if words is None and edges:
                # On a thread, during the round below.
                words = _spawn(self._word_vectors(question_words, named))
            # Re-chosen every round from all relations seen (freezing each type's first choice
            # measured worse); only chunks not read yet are fetched.
            stated = stating_chunks(edges, self.w.stating_chunks, UNTYPED_RELATION)
            unread = sorted({c for cs in stated.values() for c in cs} - read)
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
                    finals = self._finals(ahead, matched, after, status, level)
            elif hop == req.hops and len(reached) + len(new) <= AHEAD_LIMIT:
                # The last hop reaches some of `new`, which depends on the weights: ask for all of it
                # now rather than for the ones reached after this round.
                ahead = [*reached, *sorted(new)]
                finals = self._finals(ahead, matched, after, status, level)
            counting = unread and stem_list
            used_soon = _spawn(self._stems_used(unread, stem_list, hit_shard, after, status, level))
            labels = await self._relevance(words, edges)
            if counting and hop < req.hops and hop_edges is None:
                # While the counts are out: the next frontier as the weights stand without them (most
                # often the same, or nearly), its relations asked for now; the frontier the counts
                # give is read from them, and only what the guess missed costs a round.
                guess = _one_step(weight, hop_found, relation_factors(hop_found, _relevance_of(labels, stated, uses), self.w))
                _, likely = _next(guess, new, room, reached, expanded, AHEAD)
                guessed.ask(likely, lambda ids, st: self.graph.edges(ids, "both", None, after, st, consistency=level))
            used = await used_soon
            read.update(unread)
            for c, (n, s) in used.items():
                uses[c], holders[c] = n, s
            factors = relation_factors(edges, _relevance_of(labels, stated, uses), self.w)
            paths = spread(seeds, edges, factors, req.hops, self.w)
            weight = paths.weight
            best, frontier = _next(weight, new, room, reached, expanded, BEAM)
            reached.update(dict.fromkeys(best, hop))
        if finals is not None and not finals.of >= set(reached):
            # Cannot happen (the rounds sent early were sent only for every entity the weights could
            # choose); kept so that a mistake costs a round, not a wrong answer.
            finals.cancel()
            finals = None
        guessed.cancel()  # guesses of a hop that did not come (no entity left to expand)
        kept = [(e, f) for e, f in zip(edges, factors.tolist()) if e.source in reached and e.target in reached]
        kept_edges, kept_factors = [e for e, _ in kept], np.array([f for _, f in kept])
        if paths is None or len(kept) < len(edges):
            paths = spread(seeds, kept_edges, kept_factors, req.hops, self.w)
        # else: every relation is between reached entities, and the last round spread over them all.
        return _Expansion(reached, kept_edges, kept_factors, paths, finals, holders)

    async def _question_words(self, question: str) -> tuple[list[str], np.ndarray]:
        """The question's words (stop words too: "where" is close to BORN_IN) and their vectors, as
        the cluster's embedder sees them, once per question."""
        words = list(dict.fromkeys(tokenize(question)))
        rows = await embed_soon(self.embedder(), words) if words else np.zeros((0, self.embedder.dim))
        return words, rows

    async def _word_vectors(
        self, question_words: Awaitable[tuple[list[str], np.ndarray]], named: set[str]
    ) -> np.ndarray:
        """The question's words' vectors but those of the seeds' names ("Vosmi Works" says nothing
        about WORKS_FOR). Each word is embedded alone, so leaving rows out equals embedding fewer."""
        words, rows = await question_words
        return rows[[i for i, t in enumerate(words) if t not in named]]

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
            rows = await embed_soon(self.embedder(), [type_label(t) for t in new])
            self._type_vectors.update(zip(new, rows))
        relevance = relation_relevance(np.stack([self._type_vectors[t] for t in types]), words)
        return {t: float(r) for t, r in zip(types, relevance)}

    async def _mentions(
        self, entity_ids: list[str], after: Tokens, status: Status, consistency: Consistency
    ) -> tuple[list[Mention], bool]:
        """Chunks mentioning the entities, asked of the entities' owners (mentions are stored at both
        ends), and whether every shard's answer was whole (shorter than the request's limit)."""
        groups = by_owner(self.client, entity_ids)
        requests = {s: ShardMentions(entity_ids=ids, after=token(after, s), consistency=consistency) for s, ids in groups.items()}
        replies = await self.client.fan_out(MENTIONS, requests, status)
        whole = all(len(rep.mentions) < requests[s].limit for s, rep in replies.items())
        return sorted((m for rep in replies.values() for m in rep.mentions), key=lambda m: (m.chunk_id, m.entity_id)), whole

    async def _stems_used(
        self,
        ids: list[str],
        stem_list: list[str],
        hit_shard: dict[str, int],
        after: Tokens,
        status: Status,
        consistency: Consistency,
    ) -> dict[str, tuple[int, int]]:
        """How many of the question's stems each chunk's text uses, counted by the shard holding it
        from its text index (no chunk text crosses the wire, no database read), and that shard;
        asked of every shard when the chunk is known only by id."""
        if not stem_list:
            return {}  # no stems asked: every chunk uses none
        requests = {
            s: ShardChunkStems(
                ids=g, stems=stem_list, stem_length=STEM_LENGTH, min_length=STEM_MIN_WORD,
                after=token(after, s), consistency=consistency,
            )
            for s, g in self._by_holder(ids, {}, hit_shard).items()
        }
        replies = await self.client.fan_out(CHUNK_STEMS, requests, status)
        return {c: (n, s) for s, reply in replies.items() for c, n in reply.uses.items()}

    def _by_holder(self, ids: list[str], located: dict[str, str], hit_shard: dict[str, int]) -> dict[int, list[str]]:
        """Chunk ids by the shard holding them (a chunk lives with its document); one known only by
        id goes to every shard."""
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
        return groups

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
        groups = self._by_holder(ids, located, hit_shard)
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


def _relevance_of(labels: dict[str, float], stated: dict[str, list[str]], uses: dict[str, int]) -> dict[str, float]:
    """Each relation type's relevance: the closer of its label's and its stating chunks' words."""
    lexical = lexical_relevance_of(stated, uses)
    return {t: max(labels.get(t, 0.0), lexical.get(t, 0.0)) for t in labels.keys() | lexical.keys()}


def _one_step(weight: dict[str, float], edges: list[EdgeOut], factors: np.ndarray) -> dict[str, float]:
    """`weight` carried one relation further along `edges` (each passing on its factor), both ways:
    a cheap guess of the next weights, for the frontier after them (a full spread cost as much CPU
    as the round the guess saves)."""
    guess = dict(weight)
    for e, f in zip(edges, factors.tolist()):
        a, b = weight.get(e.source, 0.0) * f, weight.get(e.target, 0.0) * f
        if a > guess.get(e.target, 0.0):
            guess[e.target] = a
        if b > guess.get(e.source, 0.0):
            guess[e.source] = b
    return guess


def _next(
    weight: dict[str, float], new: set[str], room: int, reached: dict[str, int], expanded: set[str], beam: int
) -> tuple[list[str], list[str]]:
    """By these weights: the new entities reached (the best `room`), and the next frontier — the `beam`
    best-weighted entities reached and not expanded yet, also those reached earlier whose weight rose
    once a longer path through them was seen."""
    # All of them when they fit (in id order: which are reached does not depend on the weights).
    best = sorted(new) if len(new) <= room else sorted(new, key=lambda x: (-weight.get(x, 0.0), x))[:room]
    waiting = [x for x in (*reached, *best) if x not in expanded]
    return best, heapq.nsmallest(beam, waiting, key=lambda x: (-weight.get(x, 0.0), x))


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
    fut.add_done_callback(retrieved)
    return fut
