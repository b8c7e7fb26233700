"""Which nodes exist and how they are doing, from their announcements and heartbeats.

Pure: the caller passes the clock, so failure detection is tested without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torua.wire import Announce, Heartbeat, NodeView, ReplicaStatus
from torua_coordinator.placement import NodeSlot

__all__ = ["NodeRecord", "Registry"]


@dataclass(slots=True)
class NodeRecord:
    id: str
    incarnation: int
    version: str = ""
    capacity: int | None = None
    status: str = "healthy"  # healthy | unhealthy | dead | draining
    last_seen: float = 0.0  # monotonic, for timeouts
    last_heartbeat_wall: float | None = None  # epoch seconds, for people
    uptime_s: float = 0.0
    replicas: dict[int, ReplicaStatus] = field(default_factory=dict)
    unhealthy_since: float | None = None
    # Being decommissioned: placement gives it nothing. Kept while the node is away (it stays
    # drained when it returns: the node keeps the flag on disk and reports it in every heartbeat).
    draining: bool = False

    def active_shards(self) -> set[int]:
        return {s for s, r in self.replicas.items() if r.state == "active"}


class Registry:
    def __init__(self, node_timeout: float, reassign_delay: float) -> None:
        self.node_timeout = node_timeout
        self.reassign_delay = reassign_delay
        self.nodes: dict[str, NodeRecord] = {}

    def adopt(self, node_ids: list[str], now: float) -> None:
        """A new leader assumes the nodes of the current map are alive until their timeout says otherwise."""
        for node_id in node_ids:
            self.nodes.setdefault(node_id, NodeRecord(id=node_id, incarnation=0, last_seen=now))

    def announce(self, msg: Announce, now: float, wall: float) -> bool:
        rec = self.nodes.get(msg.node_id)
        if rec is not None and msg.incarnation < rec.incarnation:
            return False  # from an older life of this node
        if msg.event == "left":
            return self.nodes.pop(msg.node_id, None) is not None
        if msg.event == "stop":
            self._stopped(msg, now)
            return True
        rec = self._refresh(msg.node_id, msg.incarnation, now, wall)
        rec.version, rec.capacity = msg.version, msg.capacity
        rec.draining = msg.event == "leave"
        rec.status = "draining" if rec.draining else "healthy"
        return True

    def _stopped(self, msg: Announce, now: float) -> None:
        """A node stopping gracefully keeps its data and comes back: absent, as after a failure
        (its replicas stop counting as active now, and move only after the reassign delay), but
        known at once rather than after the node timeout."""
        rec = self.nodes.get(msg.node_id)
        if rec is None or msg.incarnation > rec.incarnation:
            rec = NodeRecord(id=msg.node_id, incarnation=msg.incarnation, version=msg.version, capacity=msg.capacity)
            self.nodes[msg.node_id] = rec
        rec.status, rec.unhealthy_since, rec.last_seen = "unhealthy", now, now
        rec.replicas = {}

    def heartbeat(self, hb: Heartbeat, now: float, wall: float) -> bool:
        """Record a heartbeat; returns whether anything placement or the map depends on changed."""
        rec = self.nodes.get(hb.node_id)
        if rec is not None and hb.incarnation < rec.incarnation:
            return False
        before = (rec.status, rec.capacity, rec.incarnation, rec.replicas) if rec else None
        rec = self._refresh(hb.node_id, hb.incarnation, now, wall)
        rec.version, rec.capacity, rec.uptime_s = hb.version, hb.capacity, hb.uptime_s
        rec.draining = hb.draining
        rec.status = "draining" if hb.draining else "healthy"
        rec.replicas = {r.shard: r for r in hb.replicas}
        return before != (rec.status, rec.capacity, rec.incarnation, rec.replicas)

    def set_draining(self, node_id: str, draining: bool) -> bool:
        """Record a drain (or its cancel) the node has confirmed, before its next heartbeat says so;
        returns whether anything changed."""
        rec = self.nodes.get(node_id)
        if rec is None or rec.draining == draining:
            return False
        rec.draining = draining
        if rec.status in ("healthy", "draining"):
            rec.status = "draining" if draining else "healthy"
        return True

    def _refresh(self, node_id: str, incarnation: int, now: float, wall: float) -> NodeRecord:
        rec = self.nodes.get(node_id)
        if rec is None or incarnation > rec.incarnation:
            rec = NodeRecord(id=node_id, incarnation=incarnation)
            self.nodes[node_id] = rec
        rec.last_seen, rec.last_heartbeat_wall, rec.unhealthy_since = now, wall, None
        return rec

    def sweep(self, now: float) -> bool:
        """Mark silent nodes unhealthy, then dead after the reassign delay; returns whether any changed."""
        changed = False
        for rec in self.nodes.values():
            silent = now - rec.last_seen
            if rec.status in ("healthy", "draining") and silent > self.node_timeout:
                rec.status, rec.unhealthy_since, changed = "unhealthy", now, True
            elif rec.status == "unhealthy" and rec.unhealthy_since is not None:
                if now - rec.unhealthy_since >= self.reassign_delay:
                    rec.status, changed = "dead", True
        return changed

    def placement_nodes(self) -> list[NodeSlot]:
        """Nodes that should hold replicas: alive or not yet given up on, and not draining."""
        return [
            NodeSlot(id=r.id, capacity=r.capacity)
            for r in sorted(self.nodes.values(), key=lambda r: r.id)
            if r.status in ("healthy", "unhealthy") and not r.draining
        ]

    def serving(self, node_id: str) -> set[int]:
        """Shards whose replica on this node is active and reachable right now."""
        rec = self.nodes.get(node_id)
        if rec is None or rec.status not in ("healthy", "draining"):
            return set()
        return rec.active_shards()

    def reachable(self) -> list[NodeRecord]:
        return [r for r in self.nodes.values() if r.status in ("healthy", "unhealthy", "draining")]

    def healthy_count(self) -> int:
        return sum(1 for r in self.nodes.values() if r.status == "healthy")

    def view(self, assigned: dict[str, list[int]]) -> list[NodeView]:
        views = []
        for rec in sorted(self.nodes.values(), key=lambda r: r.id):
            shards = sorted(assigned.get(rec.id, []))
            free = None if rec.capacity is None else max(rec.capacity - len(shards), 0)
            views.append(
                NodeView(
                    id=rec.id,
                    status=rec.status,  # type: ignore[arg-type]
                    version=rec.version,
                    shards=shards,
                    last_heartbeat=rec.last_heartbeat_wall,
                    uptime_s=round(rec.uptime_s, 3),
                    capacity=rec.capacity,
                    available_capacity=free,
                    incarnation=rec.incarnation,
                    draining=rec.draining,
                )
            )
        return views
