"""Make-before-break and Elasticsearch-style cluster state."""

from __future__ import annotations

from torua.wire import ShardEntry

from torua_coordinator.shardmap import cluster_state, drain_progress, next_entries, replica_counts


def serving_from(active: dict[str, set[int]]):
    return lambda node: active.get(node, set())


def test_old_replica_serves_until_new_one_is_active() -> None:
    prev = [ShardEntry(id=0, replicas=["a", "b"], active=["a", "b"])]
    target = {0: ["a", "c"]}
    live = {"a", "b", "c"}
    entries = next_entries(prev, target, serving_from({"a": {0}, "b": {0}}), live, 2)
    assert entries[0].replicas == ["a", "c"] and entries[0].leaving == ["b"]
    assert entries[0].state == "initializing"
    assert cluster_state(entries, 2) == "green"  # two active copies still serve
    entries = next_entries(entries, target, serving_from({"a": {0}, "b": {0}, "c": {0}}), live, 2)
    assert entries[0].leaving == [] and entries[0].state == "active"


def test_unreachable_old_replica_is_dropped_at_once() -> None:
    prev = [ShardEntry(id=0, replicas=["a", "b"])]
    entries = next_entries(prev, {0: ["a", "c"]}, serving_from({"a": {0}}), {"a", "c"}, 2)
    assert entries[0].leaving == []
    assert cluster_state(entries, 2) == "yellow"


def test_red_when_a_shard_has_no_active_copy() -> None:
    entries = next_entries([], {0: ["a"], 1: ["b"]}, serving_from({"a": {0}}), {"a", "b"}, 1)
    assert cluster_state(entries, 1) == "red"
    counts = replica_counts(entries, 1)
    assert (counts.active, counts.initializing, counts.unassigned) == (1, 1, 0)


def test_shard_keeps_last_holders_when_no_node_is_left() -> None:
    prev = [ShardEntry(id=0, replicas=["a"])]
    entries = next_entries(prev, {0: []}, serving_from({}), set(), 1)
    assert entries[0].replicas == ["a"] and entries[0].state == "unavailable"


def test_drain_progress_from_the_published_and_the_planned_map() -> None:
    published = [
        ShardEntry(id=0, replicas=["a", "b"], active=["a", "b"]),  # not moved yet
        ShardEntry(id=1, replicas=["b", "c"], leaving=["a"], active=["a", "b"]),  # c catching up
        ShardEntry(id=2, replicas=["b", "c"], active=["b", "c"]),  # not on a
        ShardEntry(id=3, replicas=["a"], active=["a"]),  # nowhere else to go
    ]
    planned = [
        ShardEntry(id=0, replicas=["b", "c"], leaving=["a"], active=["a", "b"]),
        ShardEntry(id=1, replicas=["b", "c"], leaving=["a"], active=["a", "b"]),
        ShardEntry(id=2, replicas=["b", "c"], active=["b", "c"]),
        ShardEntry(id=3, replicas=["a"], active=["a"]),
    ]
    got = drain_progress("a", published, planned)
    assert [(s.shard, s.state, s.to) for s in got] == [
        (0, "moving", ["c"]),
        (1, "moving", ["c"]),
        (3, "blocked", []),
    ]
    assert drain_progress("d", published, planned) == []
