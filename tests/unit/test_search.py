"""Search across shards without NATS: the same data on 1 and on 4 fake shards must give the same
answers (global top-k with an id tie-break, BM25 with global statistics), and failures follow the
fan-out policy."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest

from tests.unit.fake_shards import DIM, FakeShards
from torua.embedding import Embedder, HashEmbedder
from torua.errors import BadRequest, InternalError, Unavailable
from torua.model import Chunk, Entity, TextSearchRequest, VectorSearchRequest
from torua_node.rag.ranking import rrf
from torua_node.rag.search import Search
from torua_node.storage.textindex import TextIndex, bm25_idf, query_terms
from torua_node.storage.vectors import VectorIndex

WORDS = ["river", "stone", "lantern", "guild", "harbour", "ferry", "copper", "bell", "orchard", "mill",
         "tower", "market", "bridge", "archive", "school", "garden", "forge", "winter"]


class Embedding:
    """The embedder provider the composition root gives Search (here a fixed HashEmbedder)."""

    def __init__(self, dim: int = DIM) -> None:
        self._embedder = HashEmbedder(dim)

    @property
    def dim(self) -> int:
        return self._embedder.dim

    def __call__(self) -> Embedder:
        return self._embedder


def corpus(seed: int = 7, n: int = 120) -> list[Chunk]:
    rnd = random.Random(seed)
    return [
        Chunk(id=f"c{i:03d}", document_id=f"d{i % 17}", text=" ".join(rnd.choices(WORDS, k=rnd.randint(3, 12))))
        for i in range(n)
    ]


def cluster(num_shards: int, chunks: list[Chunk], entities: Sequence[Entity] = ()) -> tuple[FakeShards, Search]:
    fake = FakeShards(num_shards)
    fake.add(entities=entities, chunks=chunks)
    return fake, Search(fake, Embedding())


@pytest.fixture()
def data() -> list[Chunk]:
    return corpus()


@pytest.mark.parametrize("text", ["lantern guild", "copper bell tower", "winter forge garden market"])
async def test_bm25_with_global_statistics_equals_one_index(data: list[Chunk], text: str) -> None:
    # The reference: one index over everything, scored with its own statistics.
    index = TextIndex()
    index.upsert((c.id, c.text) for c in data)
    terms = query_terms(text)
    df, n_docs, total = index.stats(terms)
    expected = index.search({t: bm25_idf(df[t], n_docs) for t in terms}, total / n_docs, 10)

    one = await cluster(1, data)[1].text(TextSearchRequest(text=text, k=10))
    fake4, search4 = cluster(4, data)
    four = await search4.text(TextSearchRequest(text=text, k=10))
    assert len({s for s, _, _ in fake4.calls}) == 4  # the data really is spread
    for reply in (one, four):
        assert not reply.partial
        assert [h.id for h in reply.hits] == [i for i, _ in expected]
        assert [h.score for h in reply.hits] == pytest.approx([s for _, s in expected], rel=1e-12)
    assert all(h.shard == fake4.owner(f"d{int(h.id[1:]) % 17}") for h in four.hits)


async def test_bm25_asks_statistics_first_then_scores_with_them(data: list[Chunk]) -> None:
    fake, search = cluster(4, data)
    await search.text(TextSearchRequest(text="lantern bell", k=5, after={"2": 11}))
    rounds = [name for _, name, _ in fake.calls]
    assert rounds == ["text_stats"] * 4 + ["text"] * 4
    asks = dict(fake.ops("text"))
    assert {s: r.after for s, r in asks.items()} == {0: 0, 1: 0, 2: 11, 3: 0}
    assert len({tuple(sorted(r.idf.items())) for r in asks.values()}) == 1  # the same global statistics


async def test_vector_top_k_is_global_with_an_id_tie_break() -> None:
    rnd = random.Random(3)
    base = [rnd.uniform(-1, 1) for _ in range(DIM)]
    # Twelve chunks share one vector (equal scores), the rest are random.
    chunks = [Chunk(id=f"t{i:02d}", document_id=f"doc{i}", text="x", embedding=base) for i in range(12)]
    chunks += [Chunk(id=f"r{i:02d}", document_id=f"doc{i}", text="y", embedding=[rnd.uniform(-1, 1) for _ in range(DIM)])
               for i in range(60)]
    index = VectorIndex(DIM)
    index.upsert([c.id for c in chunks], np.asarray([c.embedding for c in chunks], np.float32))
    expected = index.search(np.asarray(base, np.float32), 8)
    assert [i for i, _ in expected] == [f"t{i:02d}" for i in range(8)]  # ties, ordered by id
    for n in (1, 4):
        reply = await cluster(n, chunks)[1].vector(VectorSearchRequest(vector=base, k=8))
        assert [h.id for h in reply.hits] == [i for i, _ in expected]
        assert [h.score for h in reply.hits] == pytest.approx([s for _, s in expected], abs=1e-6)


async def test_vector_search_by_text_embeds_the_text(data: list[Chunk]) -> None:
    _, search = cluster(4, data)
    by_text = await search.vector(VectorSearchRequest(text="copper bell", k=5))
    vec = HashEmbedder(DIM).embed(["copper bell"])[0].tolist()
    by_vector = await search.vector(VectorSearchRequest(vector=vec, k=5))
    assert by_text.hits == by_vector.hits and len(by_text.hits) == 5


async def test_entities_are_searched_as_a_separate_target(data: list[Chunk]) -> None:
    ents = [Entity(id="guild", name="Lantern Guild", description="a guild of lamp makers"),
            Entity(id="mill", name="Old Mill", description="by the river")]
    _, search = cluster(4, data, ents)
    reply = await search.text(TextSearchRequest(text="lantern guild", k=5, target="entities"))
    assert [h.id for h in reply.hits] == ["guild"]


async def test_requests_checked_before_any_shard_is_asked(data: list[Chunk]) -> None:
    fake, search = cluster(4, data)
    with pytest.raises(BadRequest, match="embedding_dim is 32"):
        await search.vector(VectorSearchRequest(vector=[1.0, 2.0], k=3))
    with pytest.raises(BadRequest, match="exactly one"):
        await search.vector(VectorSearchRequest(k=3))
    empty = await search.text(TextSearchRequest(text="the of and", k=3))  # only stopwords
    assert empty.hits == [] and not empty.partial
    assert fake.calls == []


@pytest.mark.parametrize("failure", [Unavailable("no replica of shard 1 answered (TimeoutError)"), InternalError("x")])
async def test_a_failing_shard_makes_search_partial(data: list[Chunk], failure: Exception) -> None:
    fake, search = cluster(4, data)
    full = await search.text(TextSearchRequest(text="lantern guild", k=100))
    fake.fail[1] = failure
    for reply in (await search.text(TextSearchRequest(text="lantern guild", k=100)),
                  await search.vector(VectorSearchRequest(text="lantern guild", k=100)),
                  await search.hybrid(TextSearchRequest(text="lantern guild", k=100))):
        assert reply.partial and reply.shards["1"].ok is False
        assert reply.shards["1"].error == str(failure)
        assert all(reply.shards[str(s)].ok for s in (0, 2, 3))
        assert reply.hits and all(h.shard != 1 for h in reply.hits)
    # Every match of the live shards is there (scored with their statistics only), none of shard 1's.
    got = await search.text(TextSearchRequest(text="lantern guild", k=100))
    assert {h.id for h in got.hits} == {h.id for h in full.hits if h.shard != 1} != {h.id for h in full.hits}


async def test_a_shard_failing_in_the_statistics_round_is_not_asked_to_score(data: list[Chunk]) -> None:
    fake, search = cluster(4, data)
    fake.fail[(2, "text_stats")] = Unavailable("behind")
    reply = await search.text(TextSearchRequest(text="lantern", k=5))
    assert reply.partial and sorted(s for s, _ in fake.ops("text")) == [0, 1, 3]


async def test_a_bad_request_from_a_shard_is_raised(data: list[Chunk]) -> None:
    fake, search = cluster(4, data)
    fake.fail[(3, "vector")] = BadRequest("vector has 2 values; this cluster's embedding_dim is 32")
    with pytest.raises(BadRequest, match="embedding_dim"):
        await search.vector(VectorSearchRequest(text="lantern", k=5))


async def test_hybrid_fuses_bm25_and_vector_rankings(data: list[Chunk]) -> None:
    _, search = cluster(4, data)
    q = "orchard mill"
    depth = 30
    bm25 = await search.text_hits(q, depth, "chunks", {}, {})
    vec = await search.vector_hits(await search.embed(q), depth, "chunks", {}, {})
    reply = await search.hybrid(TextSearchRequest(text=q, k=7))
    assert reply.hits == rrf([bm25, vec], 7) and len(reply.hits) == 7
    one = await cluster(1, data)[1].hybrid(TextSearchRequest(text=q, k=7))
    assert [h.id for h in one.hits] == [h.id for h in reply.hits]
