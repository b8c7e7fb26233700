"""Copies that converge (DESIGN §3): entities and relations apply last-writer-wins by the write's
version, deletes are versioned tombstones, so the same set of writes in any order, in any batches,
gives the same content — on real Kuzu, compared by the replicas' content digest."""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import itertools
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_apply import (
    APPLY_EXAMPLES,
    DIM,
    dump,
    ent,
    entry,
    q,
    rel,
    temp_db,
    vec,
    wal,
)
from torua.embedding import HashEmbedder
from torua.errors import BadRequest
from torua.hashing import shard_for
from torua.hlc import version_of
from torua.model import DeleteRequest, Entity, Relation, RelationKey, UpsertRequest
from torua_node.router.split import split_delete, split_kv, split_upsert
from torua_node.shard.apply import apply_batch
from torua_node.shard.wal import WalEntry, WalRelationKey
from torua_node.storage.digest import content_digest
from torua_node.storage.schema import read_applied_seq

NOW_US = 1_780_000_000_000_000  # 2026, in µs
E_IDS = ["a", "b", "c", "d"]


def v(n: int) -> int:
    """The n-th version: n ms after NOW (realistic HLC values, one router)."""
    return version_of(NOW_US + n * 1000, router=7)


def key(s: str, t: str, ty: str = "R") -> WalRelationKey:
    return WalRelationKey(s, t, ty)


def relations(conn: Any) -> list[tuple]:
    return sorted(tuple(r) for r in q(conn, "MATCH (a)-[r:RELATES]->(b) RETURN a.id, r.type, b.id, r.weight"))


def entities(conn: Any) -> list[tuple]:
    return sorted(tuple(r) for r in q(conn, "MATCH (e:Entity) RETURN e.id, e.name, e.stub"))


# -- random writes ---------------------------------------------------------------------------------

s_rel = st.builds(lambda s, t, ty, w: rel(s, t, ty, w=w), st.sampled_from(E_IDS), st.sampled_from(E_IDS),
                  st.sampled_from(["R", "S"]), st.sampled_from([1.0, 2.0, 3.0]))
s_ent = st.builds(lambda i, name: ent(i, name, v=vec(float(len(name)))), st.sampled_from(E_IDS),
                  st.sampled_from(["x", "yy", "zzz"]))
s_key = st.builds(key, st.sampled_from(E_IDS), st.sampled_from(E_IDS), st.sampled_from(["R", "S"]))


@st.composite
def s_write(draw: st.DrawFn) -> dict[str, Any]:
    """One write's content (its version is given later)."""
    kind = draw(st.sampled_from(["upsert", "upsert", "upsert", "delete_relations", "delete_entities", "both"]))
    out: dict[str, Any] = {}
    if kind in ("upsert", "both"):
        out["entities"] = draw(st.lists(s_ent, max_size=2))
        out["relations"] = draw(st.lists(s_rel, min_size=1, max_size=3))
    if kind in ("delete_relations", "both"):
        out["delete_relations"] = draw(st.lists(s_key, min_size=1, max_size=2))
    if kind == "delete_entities":
        out["delete_entities"] = draw(st.lists(st.sampled_from(E_IDS), min_size=1, max_size=2))
    return out


def entries_of(writes: list[dict[str, Any]], versions: list[int]) -> list[WalEntry]:
    return [entry(version=ver, **w) for w, ver in zip(writes, versions)]


def apply_in_batches(conn: Any, entries: list[WalEntry], cuts: list[int]) -> None:
    """Append the entries to the log after what `conn` applied, and apply them cut into batches."""
    log = wal(*entries, start=read_applied_seq(conn) + 1)
    bounds = sorted({0, len(log), *(c % (len(log) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        r = apply_batch(conn, log[lo:hi], DIM)
        assert r.failures == [] and r.error is None, (r.failures, r.error)


@settings(max_examples=APPLY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(s_write(), min_size=1, max_size=10), seed=st.randoms(use_true_random=False),
       cuts=st.lists(st.integers(0, 12), max_size=3))
def test_any_order_and_batching_of_the_same_writes_gives_the_same_digest(
    no_fallback: None, writes: list[dict[str, Any]], seed: random.Random, cuts: list[int]
) -> None:
    """APPLY_EXAMPLES (test_apply) random sets of writes: 15 in `make test`, 100 under
    TORUA_HYPOTHESIS_PROFILE=long (README, "Tests")."""
    versions = [v(n) for n in range(len(writes))]
    in_order = entries_of(writes, versions)
    shuffled = in_order[:]
    seed.shuffle(shuffled)
    with temp_db() as a, temp_db() as b:
        apply_in_batches(a, shuffled, cuts)  # any order, in any batches
        apply_in_batches(b, in_order, list(range(len(in_order))))  # the versions' order, one at a time
        assert dump(a) == dump(b)
        assert content_digest(a) == content_digest(b)


@settings(max_examples=APPLY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(s_write(), min_size=1, max_size=10), seed=st.randoms(use_true_random=False))
def test_the_two_copies_of_every_relation_end_equal(
    no_fallback: None, writes: list[dict[str, Any]], seed: random.Random
) -> None:
    """APPLY_EXAMPLES (test_apply) random sets of writes: 15 in `make test`, 100 under
    TORUA_HYPOTHESIS_PROFILE=long (README, "Tests")."""
    # Shard A holds the entities and the relations; shard B only the relations' other copies and the
    # deletes (fanned out to every shard). Each gets the writes in its own order.
    versions = [v(n) for n in range(len(writes))]
    on_a = entries_of(writes, versions)
    on_b = [entry(version=e.version, relations=e.relations, delete_relations=e.delete_relations,
                  delete_entities=e.delete_entities) for e in on_a]
    seed.shuffle(on_a)
    seed.shuffle(on_b)
    with temp_db() as a, temp_db() as b:
        apply_in_batches(a, on_a, [3])
        apply_in_batches(b, on_b, [2, 5])
        assert relations(a) == relations(b)


# -- the rules, one by one ---------------------------------------------------------------------------


def test_a_late_older_upsert_does_not_resurrect_a_deleted_relation(no_fallback: None) -> None:
    with temp_db() as conn:
        apply_in_batches(conn, [
            entry(version=v(1), relations=[rel("a", "b", w=1.0)]),
            entry(version=v(3), delete_relations=[key("a", "b")]),
            entry(version=v(2), relations=[rel("a", "b", w=2.0)]),  # older than the delete: dropped
        ], [])
        assert relations(conn) == []
        assert entities(conn) == []  # stubs of a relation that is gone go too
        apply_in_batches(conn, [entry(version=v(4), relations=[rel("a", "b", w=4.0)])], [])
        assert relations(conn) == [("a", "R", "b", 4.0)]


def test_within_a_batch_the_newest_version_wins_not_the_last_entry(no_fallback: None) -> None:
    with temp_db() as conn:
        apply_in_batches(conn, [
            entry(version=v(5), entities=[ent("a", "new")], relations=[rel("a", "b", w=5.0)]),
            entry(version=v(4), entities=[ent("a", "old")], relations=[rel("a", "b", w=4.0)]),
        ], [])
        assert relations(conn) == [("a", "R", "b", 5.0)]
        assert ("a", "new", False) in entities(conn)
        # And against what is stored, in a later batch.
        apply_in_batches(conn, [entry(version=v(3), entities=[ent("a", "older")], relations=[rel("a", "b", w=3.0)])], [])
        assert relations(conn) == [("a", "R", "b", 5.0)]
        assert ("a", "new", False) in entities(conn)


def test_an_entity_delete_removes_older_relations_and_keeps_newer_ones(no_fallback: None) -> None:
    with temp_db() as conn:
        apply_in_batches(conn, [
            entry(version=v(1), entities=[ent("a")], relations=[rel("a", "b"), rel("c", "a", "S")]),
            entry(version=v(5), relations=[rel("a", "d", w=5.0)]),  # newer than the delete below
            entry(version=v(3), delete_entities=["a"]),
            entry(version=v(2), relations=[rel("b", "a", w=2.0)]),  # older than the delete: dropped
        ], [])
        assert relations(conn) == [("a", "R", "d", 5.0)]
        # The entity is gone, but a newer relation still needs its end: a stub.
        assert entities(conn) == [("a", "", True), ("d", "", True)]
        # An entity write older than the delete stays out; a newer one comes back.
        apply_in_batches(conn, [entry(version=v(2), entities=[ent("a", "OLD")])], [])
        assert ("a", "", True) in entities(conn)
        apply_in_batches(conn, [entry(version=v(6), entities=[ent("a", "NEW")])], [])
        assert ("a", "NEW", False) in entities(conn)


def test_a_delete_older_than_the_stored_entity_leaves_it(no_fallback: None) -> None:
    with temp_db() as conn:
        apply_in_batches(conn, [entry(version=v(5), entities=[ent("a", "A5")]),
                                entry(version=v(4), delete_entities=["a"])], [])
        assert entities(conn) == [("a", "A5", False)]


def test_tombstones_are_purged_after_the_retention_by_entry_versions(no_fallback: None) -> None:
    hour_us = 3600 * 10**6
    with temp_db() as conn:
        apply_in_batches(conn, [entry(version=v(1), relations=[rel("a", "b")]),
                                entry(version=v(2), delete_relations=[key("a", "b")], delete_entities=["x"])], [])
        assert len(q(conn, "MATCH (t:Tombstone) RETURN t.key")) == 2
        # An entry two hours later: the old tombstones are gone, so an old write would apply again.
        later = version_of(NOW_US + 2 * hour_us, router=7)
        apply_in_batches(conn, [entry(version=later, kv=[])], [])
        assert q(conn, "MATCH (t:Tombstone) RETURN t.key") == []


def test_the_purge_happens_at_the_same_entry_however_the_log_is_batched(no_fallback: None) -> None:
    later = version_of(NOW_US + 2 * 3600 * 10**6, router=7)
    log = [entry(version=v(1), relations=[rel("a", "b")]),
           entry(version=v(2), delete_relations=[key("a", "b")]),
           entry(version=v(3), relations=[rel("c", "d")]),
           entry(version=later, relations=[rel("x", "y")]),  # purges the tombstone of (a, b)
           entry(version=v(1) + 1, relations=[rel("a", "b", w=9.0)])]  # late: nothing keeps it out now
    with temp_db() as a, temp_db() as b:
        apply_in_batches(a, log, [])
        apply_in_batches(b, log, [1, 2, 3, 4])
        assert content_digest(a) == content_digest(b)
        assert ("a", "R", "b", 9.0) in relations(a)


def test_entries_without_a_version_keep_the_order_of_the_log(no_fallback: None) -> None:
    with temp_db() as conn:  # written before versions existed: ordered by log position
        apply_in_batches(conn, [entry(relations=[rel("a", "b", w=1.0)]), entry(delete_relations=[key("a", "b")]),
                                entry(relations=[rel("a", "b", w=3.0)])], [])
        assert relations(conn) == [("a", "R", "b", 3.0)]


# -- the delete request ------------------------------------------------------------------------------


def test_every_entry_of_one_write_carries_its_one_version() -> None:
    req = UpsertRequest(entities=[Entity(id=f"e{i}", embedding=[1.0] * 4) for i in range(10)],
                        relations=[Relation(source=f"e{i}", target=f"e{i + 1}") for i in range(9)])
    entries = split_upsert(req, 8, HashEmbedder(4), "r", 1.0, version=v(7))
    assert len(entries) > 1 and {e.version for e in entries.values()} == {v(7)}
    kv = split_kv("k", "x", 8, "r", 1.0, version=v(8))
    assert [e.version for e in kv.values()] == [v(8)]


def test_a_relation_delete_goes_to_both_ends_shards_only() -> None:
    req = DeleteRequest(relations=[RelationKey(source="s1", target="t9", type="KNOWS"),
                                   RelationKey(source="s1", target="t9", type="KNOWS")])
    entries = split_delete(req, 8, "r", 1.0, version=v(1))
    assert set(entries) == {shard_for("s1", 8), shard_for("t9", 8)}
    for e in entries.values():
        assert e.delete_relations == [WalRelationKey("s1", "t9", "KNOWS")] and e.version == v(1)
        assert e.delete_entities == [] and e.delete_documents == []
    both = split_delete(DeleteRequest(entities=["e"], relations=[RelationKey(source="s", target="t", type="T")]),
                        8, "r", 1.0, version=v(2))
    assert len(both) == 8 and all(e.delete_entities == ["e"] for e in both.values())
    assert sum(bool(e.delete_relations) for e in both.values()) == len({shard_for("s", 8), shard_for("t", 8)})
    with pytest.raises(BadRequest, match="relations"):
        split_delete(DeleteRequest(), 8, "r", 1.0)
