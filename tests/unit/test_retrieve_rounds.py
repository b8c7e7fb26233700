"""Retrieval's rounds cut without changing its answer: the shard's `chunk_stems` operation counts a
chunk's question stems from its text index exactly as graphrank reads them from the chunk's text;
chunk rows are read once, for the top k; the last hop's final round, asked for every entity the hop
may reach, gives the answer asking for the reached ones gives."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.fake_shards import FakeShards
from tests.unit.test_retrieve import CHUNKS, ENTITIES, QUESTION, RELATIONS, Embedding, retriever
from torua.model import Chunk, Entity, Relation, RetrieveReply, RetrieveRequest
from torua_node.rag import retrieve
from torua_node.rag.graphrank import (
    STEM_LENGTH,
    STEM_MIN_WORD,
    Weights,
    lexical_relevance,
    lexical_relevance_of,
    stems,
)
from torua_node.rag.retrieve import Retriever
from torua_node.router.graph import GraphReads
from torua_node.shard import protocol as p
from torua_node.shard.api import ShardApi, stems_used
from torua_node.storage.textindex import TextIndex

WORDS = ["Born", "born", "birthplace", "the", "a", "is", "of", "it", "hometown", "home", "Kell", "city",
         "cities", "founded", "founder", "x", "ab", "abc", "abcd", "ABCDE", "don't", "état", "2024", "_", "co-op"]


def _stems_request(ids: list[str], asked: set[str]) -> p.ShardChunkStems:
    return p.ShardChunkStems(ids=ids, stems=sorted(asked), stem_length=STEM_LENGTH, min_length=STEM_MIN_WORD)


@given(
    st.dictionaries(st.sampled_from([f"c{i}" for i in range(8)]), st.lists(st.sampled_from(WORDS), max_size=12)),
    st.lists(st.sampled_from(WORDS), max_size=8),
)
def test_a_shard_counts_the_stems_graphrank_reads_in_the_text(docs: dict[str, list[str]], question: list[str]) -> None:
    texts = {c: " ".join(words) for c, words in docs.items()}
    index = TextIndex()
    index.upsert(texts.items())
    asked = stems(" ".join(question))
    ids = [*texts, "absent", *texts]  # unknown ids are left out, repeated ones counted once
    assert stems_used(index, _stems_request(ids, asked)) == {c: len(asked & stems(t)) for c, t in texts.items()}


def test_relevance_from_counts_equals_relevance_from_texts() -> None:
    rng = random.Random(5)
    texts = {f"c{i}": " ".join(rng.choices(WORDS, k=rng.randint(0, 10))) for i in range(30)}
    index = TextIndex()
    index.upsert(texts.items())
    asked = stems("where is the hometown of the city founder born")
    for _ in range(50):
        stated = {t: sorted(rng.sample([*texts, "gone"], rng.randint(0, 6))) for t in ("BORN_IN", "FOUNDED", "LIVES")}
        uses = stems_used(index, _stems_request([c for cs in stated.values() for c in cs], asked))
        assert lexical_relevance_of(stated, uses) == lexical_relevance(stated, texts, asked)


class Replica:
    """What ShardApi reads of a replica for chunk_stems: its chunk text index and position."""

    def __init__(self) -> None:
        self.applied_seq = 9
        self.chunk_text = TextIndex()
        self.waited: list[int] = []

    async def wait_applied(self, seq: int) -> None:
        self.waited.append(seq)


async def test_the_chunk_stems_handler_answers_from_the_replicas_text_index() -> None:
    replica = Replica()
    replica.chunk_text.upsert([("birth", "Rena's hometown is Kell."), ("empty", "")])
    api = ShardApi(replica)  # type: ignore[arg-type]
    req = _stems_request(["birth", "empty", "elsewhere"], stems("What is her hometown?"))
    reply = await api.chunk_stems(p.ShardChunkStems(**{**_fields(req), "after": 4, "consistency": "eventual"}))
    assert reply.uses == {"birth": 1, "empty": 0}  # "home"; a chunk another shard holds is not answered
    assert reply.applied_seq == 9 and replica.waited == [4]


def _fields(req: p.ShardChunkStems) -> dict[str, object]:
    return {f: getattr(req, f) for f in req.__struct_fields__}


async def test_chunk_rows_are_read_for_the_top_k_only_from_the_shards_holding_them() -> None:
    fake, r = retriever(4)
    got = await r.retrieve(RetrieveRequest(question=QUESTION, k=3, hops=3))
    rows = [(s, c) for s, req in fake.ops("chunks") for c in req.ids]  # type: ignore[attr-defined]
    # The top 3 by text and relations, asked while the mentions were awaited, was the top 3.
    assert sorted(c for _, c in rows) == sorted(c.id for c in got.chunks)
    assert all(s == fake.owner(c.document_id) for c in got.chunks for s, x in rows if x == c.id)
    assert fake.ops("chunk_stems")  # relation types' relevance came from the shards' counts


@pytest.mark.parametrize("num_shards", [1, 4])
async def test_rows_of_chunks_the_mentions_lift_into_the_top_k_are_read_after_them(num_shards: int) -> None:
    # Mentions outweigh the rest, relations count nothing: the top k by text and relations alone
    # is not the top k.
    fake = FakeShards(num_shards)
    fake.add(entities=ENTITIES, relations=RELATIONS, chunks=CHUNKS)
    r = Retriever(fake, GraphReads(fake), Embedding(), Weights(mention=50.0, provenance=0.0))
    got = await r.retrieve(RetrieveRequest(question=QUESTION, k=2, hops=2))
    asked = {c for _, req in fake.ops("chunks") for c in req.ids}  # type: ignore[attr-defined]
    texts = {c.id: (c.text, c.document_id) for c in CHUNKS}
    assert len(got.chunks) == 2 and all((c.text, c.document_id) == texts[c.id] for c in got.chunks)
    top = {c.id for c in got.chunks}
    assert asked - top and top <= asked  # rows read early were not all needed; the top k's were read


def _hub(fake: FakeShards) -> None:
    """A guild with many members, each born in a town: the last hop finds more towns than fit."""
    entities = [Entity(id="guild", name="Lantern Guild", type="organization")]
    relations, chunks = [], []
    for i in range(12):
        m, town = f"m{i:02d}", f"t{i:02d}"
        entities += [Entity(id=m, name=f"Member {m}", type="person"), Entity(id=town, name=f"Town {town}", type="city")]
        relations += [
            Relation(source=m, target="guild", type="member_of", weight=1.0 - i / 40, chunks=[f"j{i}"]),
            Relation(source=m, target=town, type="born_in", weight=0.3 + i / 40, chunks=[f"b{i}"]),
        ]
        chunks += [
            Chunk(id=f"j{i}", document_id=f"dj{i}", text=f"Member {m} joined the Lantern Guild.", entities=[m, "guild"]),
            Chunk(id=f"b{i}", document_id=f"db{i}", text=f"Member {m} was born in {town}, a harbour.",
                  entities=[m, town]),
        ]
    fake.add(entities=entities, relations=relations, chunks=chunks)


@pytest.mark.parametrize("num_shards", [1, 3])
async def test_the_last_hops_final_round_asked_early_for_more_entities_gives_the_same_answer(
    monkeypatch: pytest.MonkeyPatch, num_shards: int
) -> None:
    req = RetrieveRequest(question="Where were the members of the Lantern Guild born?", k=6, hops=2)
    monkeypatch.setattr(retrieve, "EXPAND_LIMIT", 8)  # the second hop finds 12 towns, 5 fit

    async def run(ahead_limit: int) -> tuple[FakeShards, RetrieveReply]:
        monkeypatch.setattr(retrieve, "AHEAD_LIMIT", ahead_limit)
        fake = FakeShards(num_shards)
        _hub(fake)
        return fake, await Retriever(fake, GraphReads(fake), Embedding()).retrieve(req)

    early_fake, early = await run(100)
    late_fake, late = await run(0)
    asked_early = {i for _, q in early_fake.ops("mentions") for i in q.entity_ids}  # type: ignore[attr-defined]
    asked_late = {i for _, q in late_fake.ops("mentions") for i in q.entity_ids}  # type: ignore[attr-defined]
    reached = {e.id for e in late.entities}
    assert asked_late < asked_early and reached <= asked_late  # more were asked, fewer reached
    assert early == late
