"""GraphReads over a fake ShardClient: the BFS frontier exchange across shards (hops, direction,
limit, types, edges kept only between reached nodes), entity reads by owner, and partial answers."""

from __future__ import annotations

import itertools

import pytest

from tests.unit.fake_shards import FakeShards
from torua.errors import BadRequest, Unavailable
from torua.model import Entity, Relation, ShardStatus
from torua_node.router.graph import GraphReads

#   a -> b -> c -> d -> e        a chain
#   a -> x (likes)               a side branch with another type
#   y -> b                       an edge into the chain
#   c -> ghost                   to an entity never created (a stub on storage)
CHAIN = ["a", "b", "c", "d", "e"]
RELS = [Relation(source=s, target=t, type="next") for s, t in itertools.pairwise(CHAIN)] + [
    Relation(source="a", target="x", type="likes"),
    Relation(source="y", target="b", type="next"),
    Relation(source="c", target="ghost", type="next"),
]


def graph(num_shards: int = 4) -> tuple[FakeShards, GraphReads]:
    fake = FakeShards(num_shards)
    fake.add(entities=[Entity(id=i, name=i.upper()) for i in [*CHAIN, "x", "y"]], relations=RELS)
    return fake, GraphReads(fake)


def triples(edges: list) -> list[tuple[str, str, str]]:
    return [(e.source, e.type, e.target) for e in edges]


@pytest.mark.parametrize("num_shards", [1, 4])
async def test_hops_out_in_both(num_shards: int) -> None:
    _, g = graph(num_shards)
    out2 = await g.traverse(["b"], 2, "out", None, 100, {}, {})
    assert out2.reached == {"b": 0, "c": 1, "d": 2, "ghost": 2}
    assert triples(out2.edges) == [("b", "next", "c"), ("c", "next", "d"), ("c", "next", "ghost")]
    in2 = await g.traverse(["c"], 2, "in", None, 100, {}, {})
    assert in2.reached == {"c": 0, "b": 1, "a": 2, "y": 2}
    assert triples(in2.edges) == [("a", "next", "b"), ("b", "next", "c"), ("y", "next", "b")]
    both1 = await g.traverse(["b"], 1, "both", None, 100, {}, {})
    assert both1.reached == {"b": 0, "a": 1, "c": 1, "y": 1}
    assert triples(both1.edges) == [("a", "next", "b"), ("b", "next", "c"), ("y", "next", "b")]


async def test_edges_are_kept_only_between_reached_nodes() -> None:
    _, g = graph()
    # From a, one hop both ways reaches b and x; the edges b-c and y-b were read but lead outside.
    t = await g.traverse(["a"], 1, "both", None, 100, {}, {})
    assert t.reached == {"a": 0, "b": 1, "x": 1}
    assert triples(t.edges) == [("a", "likes", "x"), ("a", "next", "b")]


async def test_limit_keeps_the_nearest_then_by_id() -> None:
    _, g = graph()
    t = await g.traverse(["c"], 3, "both", None, 4, {}, {})
    # hop 1 from c: b, d, ghost (3 new, limit 4 reached exactly)
    assert t.reached == {"c": 0, "b": 1, "d": 1, "ghost": 1}
    t = await g.traverse(["c"], 3, "both", None, 3, {}, {})
    assert t.reached == {"c": 0, "b": 1, "d": 1}  # sorted frontier cut at the limit: ghost is last
    assert all(e.source in t.reached and e.target in t.reached for e in t.edges)


async def test_types_filter_and_start_ids_deduplicated() -> None:
    _, g = graph()
    t = await g.traverse(["a", "a"], 3, "out", ["likes"], 100, {}, {})
    assert t.reached == {"a": 0, "x": 1} and triples(t.edges) == [("a", "likes", "x")]


async def test_each_hop_asks_only_the_frontiers_owners_with_their_tokens() -> None:
    fake, g = graph(4)
    await g.traverse(["a"], 2, "out", None, 100, {"0": 5, "1": 6, "2": 7, "3": 8}, {})
    asked = fake.ops("edges")
    hop1 = [(s, r) for s, r in asked if r.ids == ["a"]]
    assert [s for s, _ in hop1] == [fake.owner("a")]
    assert all(r.after == {0: 5, 1: 6, 2: 7, 3: 8}[s] for s, r in asked)
    assert all(fake.owner(i) == s for s, r in asked for i in r.ids)
    assert sorted(i for _, r in asked[1:] for i in r.ids) == ["b", "x"]


async def test_entities_come_from_their_owners_without_stubs() -> None:
    fake, g = graph(4)
    ids = ["a", "ghost", "c", "x", "e"]
    got = await g.entities(ids, {}, status := {})
    assert sorted(e.id for e in got) == ["a", "c", "e", "x"]
    assert len(fake.ops("entities")) == len({fake.owner(i) for i in ids})
    assert all(st.ok and st.applied_seq == 1 for st in status.values())


async def test_a_failed_shard_is_reported_and_traversal_goes_on() -> None:
    fake, g = graph(4)
    dead = fake.owner("c")
    assert fake.owner("b") != dead and fake.owner("a") != dead  # the test needs c apart
    fake.fail[dead] = Unavailable(f"no replica of shard {dead} answered (TimeoutError)")
    status: dict[str, ShardStatus] = {}
    t = await g.traverse(["a"], 4, "out", None, 100, {}, status)
    # c is reached through b (b's shard holds b -> c), but c's own edges are on the dead shard.
    assert t.reached == {"a": 0, "b": 1, "x": 1, "c": 2}
    assert status[str(dead)] == ShardStatus(ok=False, error=f"no replica of shard {dead} answered (TimeoutError)")
    assert all(st.ok for s, st in status.items() if s != str(dead))


async def test_a_failed_shard_is_not_asked_again_at_later_hops() -> None:
    fake = FakeShards(4)
    dead = 1
    on_dead = [f"n{i}" for i in range(200) if fake.owner(f"n{i}") == dead][:2]
    alive = [f"n{i}" for i in range(200) if fake.owner(f"n{i}") != dead][:2]
    start, mid = alive
    first, later = on_dead
    fake.add(relations=[Relation(source=start, target=mid), Relation(source=mid, target=later)])
    fake.fail[dead] = Unavailable("down")
    status: dict[str, ShardStatus] = {}
    t = await GraphReads(fake).traverse([first, start], 3, "out", None, 100, {}, status)
    assert t.reached == {first: 0, start: 0, mid: 1, later: 2}
    assert not status[str(dead)].ok
    assert [s for s, _ in fake.ops("edges")].count(dead) == 1  # hop 1 only, not hop 3 for `later`


async def test_a_client_error_from_a_shard_is_raised() -> None:
    fake, g = graph(4)
    fake.fail[fake.owner("a")] = BadRequest("direction must be out, in or both")
    with pytest.raises(BadRequest):
        await g.traverse(["a"], 2, "both", None, 100, {}, {})
