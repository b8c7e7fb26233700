"""GraphRAG retrieval end to end over fake shards: the chunk that answers a multi-hop question shares
no word with it and is found through the graph; the answer does not depend on the shard count;
failures make it partial; the context stays within its token budget."""

from __future__ import annotations

import msgspec
import pytest

from tests.unit.fake_shards import DIM, FakeShards
from torua.chunking import approx_tokens
from torua.embedding import Embedder, HashEmbedder
from torua.errors import BadRequest, Unavailable
from torua.model import Chunk, EdgeOut, Entity, Relation, RetrievedChunk, RetrieveRequest
from torua_node.rag.retrieve import Retriever, build_context
from torua_node.router.graph import GraphReads
from torua_node.storage.textindex import query_terms

QUESTION = "Which city was the founder of the Lantern Guild born in?"

ENTITIES = [
    Entity(id="guild", name="Lantern Guild", type="organization", description="a guild of lamp makers"),
    Entity(id="mira", name="Mira Okonkwo", type="person", description="a glassblower"),
    Entity(id="avel", name="Port Avel", type="city", description="a harbour town on the north coast"),
    Entity(id="council", name="City Council", type="organization", description="it governs Rennick"),
    Entity(id="rennick", name="Rennick", type="city", description="an inland market town"),
]
RELATIONS = [
    Relation(source="mira", target="guild", type="founded", chunks=["found"]),
    Relation(source="mira", target="avel", type="born_in", chunks=["birth"]),
    Relation(source="council", target="rennick", type="governs", chunks=["d3"]),
]
ANSWER = "Okonkwo grew up by the harbour of Port Avel, where her mother ran a ferry."
CHUNKS = [
    Chunk(id="found", document_id="doc-guild", text="Mira Okonkwo founded the Lantern Guild in 1902.",
          entities=["mira", "guild"]),
    Chunk(id="birth", document_id="doc-mira", text=ANSWER, entities=["mira", "avel"]),
    Chunk(id="d1", document_id="doc-a", text="Every city needs a founder, the old saying goes."),
    Chunk(id="d2", document_id="doc-b", text="A calf was born in the city stables last spring."),
    Chunk(id="d3", document_id="doc-c", text="The city of Rennick celebrates the day its founder was born.",
          entities=["council", "rennick"]),
    Chunk(id="d4", document_id="doc-d", text="Lantern makers sell their wares in the city market."),
    Chunk(id="d5", document_id="doc-e", text="The guild hall burned down twice, and was born again."),
]


class Embedding:
    def __init__(self) -> None:
        self._embedder = HashEmbedder(DIM)

    @property
    def dim(self) -> int:
        return DIM

    def __call__(self) -> Embedder:
        return self._embedder


def retriever(num_shards: int) -> tuple[FakeShards, Retriever]:
    fake = FakeShards(num_shards)
    fake.add(entities=ENTITIES, relations=RELATIONS, chunks=CHUNKS)
    return fake, Retriever(fake, GraphReads(fake), Embedding())


def test_the_answer_shares_no_word_with_the_question() -> None:
    assert not set(query_terms(QUESTION)) & set(query_terms(ANSWER))


@pytest.mark.parametrize("num_shards", [1, 4])
async def test_a_multi_hop_answer_is_found_through_the_graph(num_shards: int) -> None:
    _, r = retriever(num_shards)
    got = await r.retrieve(RetrieveRequest(question=QUESTION, k=3, hops=2))
    ids = [c.id for c in got.chunks]
    assert "birth" in ids[:2] and "found" in ids[:2], ids
    assert not got.partial and got.shards and all(st.ok for st in got.shards.values())
    assert "[birth] " + ANSWER in got.context
    assert {(e.id, e.hop) for e in got.entities} >= {("guild", 0), ("mira", 1), ("avel", 2)}
    assert ("mira", "born_in", "avel") in {(e.source, e.type, e.target) for e in got.relations}
    # Without expansion the same question does not reach it: the graph is what ranks it.
    flat = await r.retrieve(RetrieveRequest(question=QUESTION, k=3, hops=0))
    assert "birth" not in [c.id for c in flat.chunks]


async def test_the_answer_does_not_depend_on_the_shard_count() -> None:
    req = RetrieveRequest(question=QUESTION, k=5, hops=3)
    one = await retriever(1)[1].retrieve(req)
    fake4, r4 = retriever(4)
    four = await r4.retrieve(req)
    assert len({s for s, _, _ in fake4.calls}) == 4
    assert [(c.id, c.score) for c in one.chunks] == [(c.id, c.score) for c in four.chunks]
    assert one.context == four.context
    assert msgspec.json.decode(msgspec.json.encode(four))["chunks"]  # plain floats: numpy scalars would not encode
    assert [(e.id, e.hop) for e in one.entities] == [(e.id, e.hop) for e in four.entities]
    assert all(c.shard == fake4.owner(c.document_id) for c in four.chunks)


async def test_a_failed_shard_makes_retrieval_partial() -> None:
    fake, r = retriever(4)
    dead = fake.owner("avel")
    fake.fail[dead] = Unavailable(f"no replica of shard {dead} answered (TimeoutError)")
    got = await r.retrieve(RetrieveRequest(question=QUESTION, k=3))
    assert got.partial
    assert got.shards[str(dead)].ok is False and "TimeoutError" in (got.shards[str(dead)].error or "")
    assert all(c.shard != dead for c in got.chunks)


async def test_a_client_error_from_a_shard_is_raised() -> None:
    fake, r = retriever(4)
    fake.fail[(fake.owner("mira"), "mentions")] = BadRequest("entity_ids: expected a list")
    with pytest.raises(BadRequest):
        await r.retrieve(RetrieveRequest(question=QUESTION, k=3))


@pytest.mark.parametrize("budget", [16, 30, 60, 2000])
async def test_the_context_respects_the_token_budget(budget: int) -> None:
    _, r = retriever(4)
    got = await r.retrieve(RetrieveRequest(question=QUESTION, k=5, token_budget=budget))
    assert got.tokens_used <= budget
    passages = [c for c in got.chunks if f"[{c.id}] {c.text}" in got.context]
    expected = sum(approx_tokens(f"[{c.id}] {c.text}") for c in passages)
    facts = got.context.split("Relations:\n")[1].splitlines() if "Relations:\n" in got.context else []
    assert got.tokens_used == expected + sum(approx_tokens(line) for line in facts)
    if budget == 2000:
        assert len(passages) == len(got.chunks) == 5 and facts
    # Greedy in rank order: a passage left out did not fit in what was left when its turn came.
    left = budget
    for c in got.chunks:
        cost = approx_tokens(f"[{c.id}] {c.text}")
        assert (c in passages) == (cost <= left), (c.id, cost, left)
        left -= cost if c in passages else 0


def test_build_context_fills_the_budget_best_first() -> None:
    chunks = [RetrievedChunk(id=f"c{i}", document_id="d", text="x" * n, score=1.0, shard=0)
              for i, n in enumerate([30, 200, 10])]
    edges = [EdgeOut(source="a", target="b", type="knows", weight=1.0)]
    text, used = build_context(chunks, edges, {"a": "Ada", "b": "Bo"}, 25)
    # "[c0] " + 30 chars = 35 chars = 9 tokens; c1 (52 tokens) does not fit; c2 (4 tokens) does;
    # then the relation line "- Ada knows Bo" (4 tokens).
    assert text == "[c0] " + "x" * 30 + "\n\n[c2] " + "x" * 10 + "\n\nRelations:\n- Ada knows Bo"
    assert used == 9 + 4 + 4
    assert build_context(chunks, edges, {}, 16)[1] == 16  # "- a knows b": 3 tokens
    assert build_context(chunks, edges, {}, 15) == ("[c0] " + "x" * 30 + "\n\n[c2] " + "x" * 10, 13)


async def test_an_entity_reached_early_by_a_weak_path_is_expanded_once_a_strong_one_shows() -> None:
    """"Mapol Works" is a weak seed (the question says only "works" of its name), so its founder is
    reached in the first round with little weight; the strong path to him, from "Vosmi Works" through
    the acquisition, is two relations long. Best-first expansion still follows him to his birthplace,
    although a dozen of Vosmi Works' employees are closer."""
    question = "Where was the founder of the firm that acquired Vosmi Works born?"
    answer = "Port Urilo is where Ilodoro Pratem came into the world."
    entities = [
        Entity(id="vosmi", name="Vosmi Works", type="company"),
        Entity(id="mapol", name="Mapol Works", type="company"),
        Entity(id="ilodoro", name="Ilodoro Pratem", type="person"),
        Entity(id="urilo", name="Port Urilo", type="city"),
        *(Entity(id=f"staff{i}", name=f"Staffer Number{i}", type="person") for i in range(12)),
    ]
    relations = [
        Relation(source="mapol", target="vosmi", type="ACQUIRED", chunks=["merger"]),
        Relation(source="ilodoro", target="mapol", type="FOUNDED", chunks=["start"]),
        Relation(source="ilodoro", target="urilo", type="BORN_IN", chunks=["birth"]),
        *(Relation(source=f"staff{i}", target="vosmi", type="WORKS_FOR", chunks=[f"job{i}"]) for i in range(12)),
    ]
    chunks = [
        Chunk(id="merger", document_id="d1", text="Mapol Works acquired Vosmi Works in a merger.", entities=["mapol", "vosmi"]),
        Chunk(id="start", document_id="d2", text="Ilodoro Pratem founded Mapol Works.", entities=["ilodoro", "mapol"]),
        Chunk(id="birth", document_id="d3", text=answer, entities=["ilodoro", "urilo"]),
        *(Chunk(id=f"job{i}", document_id=f"j{i}", text=f"Staffer Number{i} draws a salary from Vosmi Works.",
                entities=[f"staff{i}", "vosmi"]) for i in range(12)),
    ]
    fake = FakeShards(2)
    fake.add(entities=entities, relations=relations, chunks=chunks)
    got = await Retriever(fake, GraphReads(fake), Embedding()).retrieve(RetrieveRequest(question=question, k=5, hops=3))
    assert "urilo" in {e.id for e in got.entities}
    assert "birth" in [c.id for c in got.chunks], [c.id for c in got.chunks]
