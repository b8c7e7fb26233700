"""Failure detection and incarnations, with a hand-driven clock."""

from __future__ import annotations

from torua.wire import Announce, Heartbeat, ReplicaStatus

from torua_coordinator.registry import Registry


def hb(node: str, inc: int = 1, *, draining: bool = False, shards: tuple[int, ...] = ()) -> Heartbeat:
    replicas = [ReplicaStatus(shard=s, state="active") for s in shards]
    return Heartbeat(node_id=node, incarnation=inc, seq=1, version="t", uptime_s=0, draining=draining, replicas=replicas)


def test_silent_node_turns_unhealthy_then_dead_after_delay() -> None:
    reg = Registry(node_timeout=5, reassign_delay=10)
    reg.heartbeat(hb("a"), now=0, wall=0)
    assert not reg.sweep(4.9)
    assert reg.nodes["a"].status == "healthy"
    assert reg.sweep(5.1)
    assert reg.nodes["a"].status == "unhealthy"
    assert [n.id for n in reg.placement_nodes()] == ["a"]  # keeps its replicas until the delay
    assert not reg.sweep(15.0)
    assert reg.sweep(15.2)
    assert reg.nodes["a"].status == "dead"
    assert reg.placement_nodes() == []


def test_heartbeat_revives_and_stale_incarnation_is_ignored() -> None:
    reg = Registry(node_timeout=1, reassign_delay=1)
    reg.heartbeat(hb("a", inc=5, shards=(1,)), now=0, wall=0)
    reg.sweep(3)
    reg.sweep(5)
    assert reg.nodes["a"].status == "dead"
    assert not reg.heartbeat(hb("a", inc=4), now=6, wall=6)  # an older life: ignored
    assert reg.nodes["a"].status == "dead"
    assert reg.heartbeat(hb("a", inc=6), now=6, wall=6)
    assert reg.nodes["a"].status == "healthy" and reg.nodes["a"].incarnation == 6
    assert reg.serving("a") == set()  # new life: no replicas reported yet


def test_draining_and_left() -> None:
    reg = Registry(node_timeout=1, reassign_delay=1)
    reg.heartbeat(hb("a", shards=(0,)), now=0, wall=0)
    reg.announce(Announce(node_id="a", incarnation=1, event="leave", version="t"), now=0.1, wall=0)
    assert reg.nodes["a"].status == "draining"
    assert reg.placement_nodes() == []
    assert reg.serving("a") == {0}  # still serving while its replicas move
    reg.announce(Announce(node_id="a", incarnation=1, event="left", version="t"), now=0.2, wall=0)
    assert "a" not in reg.nodes


def test_heartbeat_change_detection() -> None:
    reg = Registry(node_timeout=1, reassign_delay=1)
    assert reg.heartbeat(hb("a"), now=0, wall=0)
    assert not reg.heartbeat(hb("a"), now=0.5, wall=0)
    assert reg.heartbeat(hb("a", shards=(3,)), now=0.6, wall=0)
