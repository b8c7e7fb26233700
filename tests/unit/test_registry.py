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
    assert reg.nodes["a"].status == "draining" and reg.nodes["a"].draining
    assert reg.placement_nodes() == []
    assert reg.serving("a") == {0}  # still serving while its replicas move
    reg.announce(Announce(node_id="a", incarnation=1, event="left", version="t"), now=0.2, wall=0)
    assert "a" not in reg.nodes


def test_stop_is_an_absence_known_at_once() -> None:
    """A gracefully stopped node keeps its replicas until the reassign delay, counted from the stop."""
    reg = Registry(node_timeout=5, reassign_delay=10)
    reg.heartbeat(hb("a", shards=(0, 1)), now=0, wall=0)
    assert reg.announce(Announce(node_id="a", incarnation=1, event="stop", version="t"), now=1, wall=1)
    rec = reg.nodes["a"]
    assert rec.status == "unhealthy" and rec.unhealthy_since == 1
    assert reg.serving("a") == set()  # not serving now, without waiting for the node timeout
    assert [n.id for n in reg.placement_nodes()] == ["a"]  # but it keeps its replicas
    assert not reg.sweep(10.9)
    assert reg.sweep(11.0) and rec.status == "dead"
    assert reg.placement_nodes() == []
    # Back (a new incarnation) before or after: healthy again.
    assert reg.heartbeat(hb("a", inc=2), now=12, wall=12)
    assert reg.nodes["a"].status == "healthy"


def test_stop_of_an_older_life_is_ignored() -> None:
    reg = Registry(node_timeout=5, reassign_delay=10)
    reg.heartbeat(hb("a", inc=2, shards=(0,)), now=0, wall=0)
    assert not reg.announce(Announce(node_id="a", incarnation=1, event="stop", version="t"), now=1, wall=1)
    assert reg.nodes["a"].status == "healthy" and reg.serving("a") == {0}


def test_a_draining_node_stays_out_of_placement_while_stopped() -> None:
    reg = Registry(node_timeout=5, reassign_delay=10)
    reg.heartbeat(hb("a", draining=True, shards=(0,)), now=0, wall=0)
    reg.heartbeat(hb("b"), now=0, wall=0)
    reg.announce(Announce(node_id="a", incarnation=1, event="stop", version="t"), now=1, wall=1)
    assert reg.nodes["a"].status == "unhealthy" and reg.nodes["a"].draining
    assert [n.id for n in reg.placement_nodes()] == ["b"]
    assert reg.view({})[0].draining


def test_set_draining_before_the_next_heartbeat() -> None:
    reg = Registry(node_timeout=5, reassign_delay=10)
    reg.heartbeat(hb("a"), now=0, wall=0)
    assert reg.set_draining("a", True)
    assert reg.nodes["a"].status == "draining" and reg.placement_nodes() == []
    assert not reg.set_draining("a", True)
    assert not reg.set_draining("nobody", True)
    assert reg.set_draining("a", False)
    assert reg.nodes["a"].status == "healthy" and [n.id for n in reg.placement_nodes()] == ["a"]


def test_heartbeat_change_detection() -> None:
    reg = Registry(node_timeout=1, reassign_delay=1)
    assert reg.heartbeat(hb("a"), now=0, wall=0)
    assert not reg.heartbeat(hb("a"), now=0.5, wall=0)
    assert reg.heartbeat(hb("a", shards=(3,)), now=0.6, wall=0)
