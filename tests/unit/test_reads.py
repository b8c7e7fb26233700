"""Local reads of a shard replica on real Kuzu: stubs hidden, deterministic edge order, limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kuzu
import numpy as np
import pytest

from tests.unit.test_apply import DIM, ent, entry, rel, shard_db, vec, wal
from torua.model import EdgeOut
from torua_node.shard.apply import apply_batch
from torua_node.shard.wal import WalKV, WalMention
from torua_node.storage.reads import edges, entities_by_ids, get_entity, kv_get


@pytest.fixture
def conn(tmp_path: Path, statement_mode: str) -> Iterator[kuzu.Connection]:
    with shard_db(tmp_path / "shard") as c:
        apply_batch(c, wal(
            entry(entities=[ent("a", "Alice", vec(1, 2, 3, 4), properties='{"age": 30, "tags": ["x"]}',
                                description="d"),
                            ent("b", "Bob"), ent("c", "Carol", properties="")],
                  relations=[rel("a", "b", "KNOWS", 0.5, ["ch1"], '{"since": 2020}'), rel("a", "c", "KNOWS"),
                             rel("a", "b", "LIKES"), rel("c", "a", "KNOWS"), rel("a", "a", "SELF"),
                             rel("far", "a", "KNOWS"), rel("b", "far2", "WORKS_AT")],
                  mentions=[WalMention("ch9", "doc9", "a")], kv=[WalKV("k", "v")]),
        ), DIM)
        yield c


def keys(es: list[EdgeOut]) -> list[tuple[str, str, str]]:
    return [(e.source, e.type, e.target) for e in es]


def test_get_entity_decodes_properties_and_embedding(conn: kuzu.Connection) -> None:
    a = get_entity(conn, "a", embedding=True)
    assert a is not None
    assert (a.id, a.name, a.type, a.description) == ("a", "Alice", "T", "d")
    assert a.properties == {"age": 30, "tags": ["x"]}
    assert a.embedding == [1.0, 2.0, 3.0, 4.0]
    without = get_entity(conn, "a")  # the vector only when asked: it is most of a reply's bytes
    assert without is not None and without.embedding is None and without.name == "Alice"
    c = get_entity(conn, "c")
    assert c is not None and c.properties == {}


def test_stubs_and_absent_ids_are_invisible(conn: kuzu.Connection) -> None:
    assert get_entity(conn, "far") is None  # a stub: lives on another shard
    assert get_entity(conn, "nope") is None
    got = entities_by_ids(conn, ["c", "far", "a", "nope", "c"])
    assert [e.id for e in got] == ["c", "a"]
    assert all(e.embedding is None for e in got)
    assert entities_by_ids(conn, ["a"], embeddings=True)[0].embedding == [1.0, 2.0, 3.0, 4.0]
    assert entities_by_ids(conn, []) == []


def test_edges_by_direction_in_source_type_target_order(conn: kuzu.Connection) -> None:
    assert keys(edges(conn, ["a"], "out", None, 100)) == [
        ("a", "KNOWS", "b"), ("a", "KNOWS", "c"), ("a", "LIKES", "b"), ("a", "SELF", "a")]
    assert keys(edges(conn, ["a"], "in", None, 100)) == [
        ("a", "SELF", "a"), ("c", "KNOWS", "a"), ("far", "KNOWS", "a")]
    both = edges(conn, ["a"], "both", None, 100)
    assert keys(both) == [("a", "KNOWS", "b"), ("a", "KNOWS", "c"), ("a", "LIKES", "b"), ("a", "SELF", "a"),
                          ("c", "KNOWS", "a"), ("far", "KNOWS", "a")]  # the self-loop once
    first = both[0]
    assert (first.weight, first.properties, first.chunks) == (0.5, {"since": 2020}, ["ch1"])


def test_edges_dedupe_across_ids_filter_types_and_limit(conn: kuzu.Connection) -> None:
    ab = edges(conn, ["a", "b", "a"], "both", None, 100)
    assert len(keys(ab)) == len(set(keys(ab))) == 7
    assert keys(edges(conn, ["a", "b"], "both", ["KNOWS"], 100)) == [
        ("a", "KNOWS", "b"), ("a", "KNOWS", "c"), ("c", "KNOWS", "a"), ("far", "KNOWS", "a")]
    assert keys(edges(conn, ["a", "b"], "both", None, 3)) == keys(ab)[:3]
    assert keys(edges(conn, ["a"], "in", None, 1)) == [("a", "SELF", "a")]
    assert edges(conn, ["a"], "out", ["NOPE"], 10) == []
    assert edges(conn, ["nope"], "both", None, 10) == []
    assert edges(conn, ["b"], "out", [], 10) == edges(conn, ["b"], "out", None, 10)  # [] = any type


def test_edges_of_a_stub_are_local_copies(conn: kuzu.Connection) -> None:
    # "far" lives elsewhere; this shard holds the edge because its target "a" lives here.
    assert keys(edges(conn, ["far"], "out", None, 10)) == [("far", "KNOWS", "a")]


def test_edges_rejects_a_bad_direction(conn: kuzu.Connection) -> None:
    with pytest.raises(ValueError, match="direction"):
        edges(conn, ["a"], "sideways", None, 10)  # type: ignore[arg-type]


def test_kv_get(conn: kuzu.Connection) -> None:
    assert kv_get(conn, "k") == "v"
    assert kv_get(conn, "missing") is None


def test_edges_limit_is_exact_on_a_hub(tmp_path: Path, statement_mode: str) -> None:
    rng = np.random.default_rng(1)
    targets = [f"t{i:04d}" for i in rng.permutation(500)]
    with shard_db(tmp_path / "hub") as c:
        apply_batch(c, wal(entry(entities=[ent("hub")],
                                 relations=[rel("hub", t, "R" if i % 2 else "Q") for i, t in enumerate(targets)]
                                 + [rel(t, "hub", "IN") for t in targets[:50]])), DIM)
        everything = keys(edges(c, ["hub"], "both", None, 100_000))
        assert len(everything) == 550 and everything == sorted(everything)
        assert keys(edges(c, ["hub"], "both", None, 17)) == everything[:17]
        assert keys(edges(c, ["hub"], "in", None, 5)) == sorted(everything[500:])[:5]
