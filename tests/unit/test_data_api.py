"""The data API's reads over a fake ShardClient: get, kv, neighbors, and the result cache wrapper."""

from __future__ import annotations

import pytest

from tests.unit.fake_shards import DIM, FakeShards
from torua.embedding import Embedder, HashEmbedder
from torua.errors import NotFound, Unavailable
from torua.model import Entity, GetRequest, KVGetRequest, NeighborsRequest, Relation
from torua_node.router.api import DataApi
from torua_node.router.cache import ResultCache
from torua_node.router.graph import GraphReads
from torua_node.router.split import kv_shard


class Embedding:
    dim = DIM

    def __call__(self) -> Embedder:
        return HashEmbedder(DIM)


def api(num_shards: int = 4) -> tuple[FakeShards, DataApi]:
    fake = FakeShards(num_shards)
    fake.add(
        entities=[Entity(id=i, name=i.upper(), type="t") for i in ("a", "b", "c", "d")],
        relations=[Relation(source="a", target="b", type="x"), Relation(source="b", target="c", type="x"),
                   Relation(source="d", target="a", type="y"), Relation(source="c", target="nobody", type="x")],
    )
    return fake, DataApi(None, fake, GraphReads(fake), Embedding(), ResultCache())  # type: ignore[arg-type]


async def test_get_and_kv_get_ask_the_owner_with_its_token() -> None:
    fake, data = api()
    got = await data.get(GetRequest(id="c", after={str(fake.owner("c")): 12}))
    assert got.entity.name == "C" and got.shard == fake.owner("c")
    [(shard, req)] = fake.ops("get")
    assert shard == fake.owner("c") and req.after == 12
    with pytest.raises(NotFound):
        await data.get(GetRequest(id="nobody"))
    fake.put_kv("colour", "blue", kv_shard("colour", 4))
    assert (await data.kv_get(KVGetRequest(key="colour"))).value == "blue"
    with pytest.raises(NotFound):
        await data.kv_get(KVGetRequest(key="size"))


async def test_neighbors_nearest_first_without_stubs() -> None:
    _, data = api()
    got = await data.neighbors(NeighborsRequest(ids=["a"], hops=2))
    assert [(n.id, n.name) for n in got.nodes] == [("a", "A"), ("b", "B"), ("d", "D"), ("c", "C")]
    assert [(e.source, e.target) for e in got.edges] == [("a", "b"), ("b", "c"), ("d", "a")]
    assert not got.partial and all(st.ok for st in got.shards.values())
    out = await data.neighbors(NeighborsRequest(ids=["b"], hops=2, direction="out"))
    # "nobody" is reached (an edge leads there) but was never created: no node for it.
    assert [n.id for n in out.nodes] == ["b", "c"] and ("c", "nobody") in {(e.source, e.target) for e in out.edges}


async def test_cached_eventual_reads_until_a_shard_moves_on() -> None:
    fake, data = api()
    neighbors = data.cached("neighbors", data.neighbors)
    req = NeighborsRequest(ids=["a"], hops=2, consistency="eventual")
    first = await neighbors(req)
    asked = len(fake.calls)
    assert await neighbors(req) == first and len(fake.calls) == asked
    assert data.cache.hits == 1
    # A write token past what the entry read, or a shard announcing a newer position: asked again.
    shard = next(iter(first.shards))
    await neighbors(NeighborsRequest(ids=["a"], hops=2, after={shard: 2}, consistency="eventual"))
    assert len(fake.calls) > asked
    asked = len(fake.calls)
    data.cache.note(int(shard), 5)
    await neighbors(req)
    assert len(fake.calls) > asked


async def test_strong_reads_are_never_answered_from_the_cache() -> None:
    """The cache cannot know the end of every shard's log; a strong read (the default) asks the
    shards, which learn it. Its answer still serves later eventual reads."""
    fake, data = api()
    neighbors = data.cached("neighbors", data.neighbors)
    strong = NeighborsRequest(ids=["a"], hops=2)
    assert strong.consistency == "strong"
    first = await neighbors(strong)
    asked = len(fake.calls)
    assert await neighbors(strong) == first and len(fake.calls) == 2 * asked
    assert {req.consistency for _, _, req in fake.calls} == {"strong"}
    assert data.cache.hits == 0
    eventual = NeighborsRequest(ids=["a"], hops=2, consistency="eventual")
    assert await neighbors(eventual) == first and len(fake.calls) == 2 * asked
    assert data.cache.hits == 1


async def test_partial_replies_are_not_cached() -> None:
    fake, data = api()
    fake.fail[fake.owner("b")] = Unavailable("down")
    neighbors = data.cached("neighbors", data.neighbors)
    req = NeighborsRequest(ids=["a"], hops=2)
    assert (await neighbors(req)).partial
    asked = len(fake.calls)
    assert (await neighbors(req)).partial and len(fake.calls) > asked
    assert len(data.cache) == 0
