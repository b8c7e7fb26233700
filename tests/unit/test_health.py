"""The cluster's state and problems from the map and what nodes report (pure)."""

from __future__ import annotations

from torua.wire import DigestCheck, Heartbeat, ReplicaStatus, ShardEntry, ShardMap

from torua_coordinator.health import cluster_health
from torua_coordinator.registry import Registry


def registry(reports: dict[str, list[ReplicaStatus]]) -> Registry:
    reg = Registry(node_timeout=5, reassign_delay=10)
    for node, replicas in reports.items():
        reg.heartbeat(Heartbeat(node_id=node, incarnation=1, seq=1, version="t", uptime_s=0, replicas=replicas),
                      now=0, wall=0)
    return reg


def smap(active: dict[int, list[str]]) -> ShardMap:
    return ShardMap(revision=1, num_shards=len(active), replication_factor=2, shards=[
        ShardEntry(id=s, replicas=["a", "b"], state="active", active=nodes) for s, nodes in active.items()])


def ok(shard: int, **kw: object) -> ReplicaStatus:
    return ReplicaStatus(shard=shard, state="active", applied_seq=10, **kw)  # type: ignore[arg-type]


def test_all_well_is_green_without_problems() -> None:
    h = cluster_health(smap({0: ["a", "b"]}), registry({"a": [ok(0)], "b": [ok(0)]}))
    assert (h.state, h.lines) == ("green", [])


def test_a_diverged_replica_makes_the_cluster_red_naming_shard_and_node() -> None:
    diverged = ReplicaStatus(shard=1, state="diverged", applied_seq=9, error="log diverged: stream TORUA_WAL was created again")
    h = cluster_health(smap({0: ["a", "b"], 1: ["a"]}), registry({"a": [ok(0), ok(1)], "b": [ok(0), diverged]}))
    assert h.state == "red"
    assert "shard 1: replica on b stopped serving: log diverged: stream TORUA_WAL was created again" in h.lines
    assert h.counts()["log_diverged"] == 1 and h.counts()["under_replicated"] == 1


def test_a_digest_mismatch_is_red_and_reported_once_per_shard() -> None:
    a = ok(0, digest=DigestCheck(seq=7, digest="aaaa", peers={"b": "bbbb"}, match=False))
    b = ok(0, digest=DigestCheck(seq=7, digest="bbbb", peers={"a": "aaaa"}, match=False))
    h = cluster_health(smap({0: ["a", "b"]}), registry({"a": [a], "b": [b]}))
    assert h.state == "red"
    assert h.lines == ["shard 0: replicas' content differs at log position 7 (a aaaa, b bbbb); rebuild the wrong replica"]
    equal = ok(0, digest=DigestCheck(seq=7, digest="aaaa", peers={"b": "aaaa"}))
    assert cluster_health(smap({0: ["a", "b"]}), registry({"a": [equal], "b": [ok(0)]})).state == "green"


def test_an_apply_error_is_listed_without_changing_the_state() -> None:
    retrying = ok(0, error="apply failed, retrying: seq 5: OSError: [Errno 28] No space left on device")
    h = cluster_health(smap({0: ["a", "b"]}), registry({"a": [retrying], "b": [ok(0)]}))
    assert h.state == "green" and h.lines == [f"shard 0: replica on a: {retrying.error}"]


def test_reports_of_unreachable_nodes_are_left_out() -> None:
    diverged = ReplicaStatus(shard=0, state="diverged", error="log diverged: ...")
    reg = registry({"a": [ok(0)], "b": [diverged]})
    reg.nodes["b"].status = "dead"
    h = cluster_health(smap({0: ["a"]}), reg)
    assert h.state == "yellow" and h.lines == ["shard 0: 1 of 2 replicas active"]
