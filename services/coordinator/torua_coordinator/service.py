"""The cluster admin API (`torua.cluster.*`), served by the leading coordinator only."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NoReturn, Protocol

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from torua import subjects
from torua.endpoints import Endpoint, ServiceHandle, add_endpoints, encode, error_of
from torua.errors import BadRequest, Conflict, NotFound, Unavailable, error_for_code
from torua.version import __version__
from torua.wire import (
    BroadcastReply,
    BroadcastRequest,
    BroadcastResult,
    ClusterInfo,
    ControlRequest,
    DrainReply,
    DrainRequest,
    Empty,
    ErrorDetail,
    HealthReply,
    NodeCounts,
    NodesReply,
    ShardMap,
    SnapshotReply,
    SnapshotRequest,
    SnapshotTaken,
)
from torua_coordinator.health import cluster_health
from torua_coordinator.leader import Lease
from torua_coordinator.registry import Registry
from torua_coordinator.retention import Retention
from torua_coordinator.settings import CoordinatorSettings
from torua_coordinator.shardmap import assignments_by_node, drain_progress, replica_counts

__all__ = ["ClusterView", "start_cluster_service"]

log = logging.getLogger(__name__)

# How long a node may take to snapshot the shards asked of it (checkpoint, copy, upload).
SNAPSHOT_TIMEOUT_S = 300.0


class ClusterView(Protocol):
    """What the cluster API reads of the leading coordinator (torua_coordinator.app.Coordinator)."""

    @property
    def nc(self) -> NATS: ...

    @property
    def settings(self) -> CoordinatorSettings: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def lease(self) -> Lease: ...

    @property
    def shardmap(self) -> ShardMap: ...

    @property
    def started(self) -> float: ...

    @property
    def retention(self) -> Retention: ...

    def planned_map(self) -> ShardMap: ...

    def nudge(self) -> None: ...


class ClusterApi:
    def __init__(self, coord: ClusterView) -> None:
        self.coord = coord
        # One drain change at a time: two drains checked together could each leave too few nodes.
        self._drain_lock = asyncio.Lock()

    async def health(self, _: Empty) -> HealthReply:
        health = cluster_health(self.coord.shardmap, self.coord.registry)
        return HealthReply(status="ok", leader=self.coord.lease.held, state=health.state, problems=health.lines)

    async def info(self, _: Empty) -> ClusterInfo:
        c = self.coord
        smap = c.shardmap
        health = cluster_health(smap, c.registry)
        return ClusterInfo(
            cluster_id=smap.cluster_id,
            version=__version__,
            state=health.state,
            problems=health.lines,
            nodes=NodeCounts(total=len(c.registry.reachable()), healthy=c.registry.healthy_count()),
            shards=replica_counts(smap.shards, smap.replication_factor),
            embedding_dim=smap.embedding_dim,
            map_revision=smap.revision,
            uptime_s=round(time.monotonic() - c.started, 3),
            leader=c.settings.coordinator_id,
        )

    async def nodes(self, _: Empty) -> NodesReply:
        return NodesReply(nodes=self.coord.registry.view(assignments_by_node(self.coord.shardmap.shards)))

    async def shards(self, _: Empty) -> ShardMap:
        return self.coord.shardmap

    async def broadcast(self, req: BroadcastRequest) -> BroadcastReply:
        targets = sorted(r.id for r in self.coord.registry.reachable())
        control = encode(ControlRequest(op=req.op, params=req.params))
        results = await asyncio.gather(*(self._send(n, control, req.timeout) for n in targets))
        return BroadcastReply(sent_to=len(targets), results=list(results))

    async def drain(self, req: DrainRequest) -> DrainReply:
        """Decommission a node: placement stops giving it replicas and moves those it has away,
        make-before-break (each keeps serving until its new copies have caught up). The node keeps
        the flag on disk, so it stays drained across restarts until the drain is cancelled."""
        if req.action != "status":
            async with self._drain_lock:
                await self._change_drain(req)
        return self._drain_reply(req.node)

    async def snapshot(self, req: SnapshotRequest) -> SnapshotReply:
        """Snapshot shards now, each on its most advanced active replica, then purge their logs
        below what is still needed (retention.py)."""
        c = self.coord
        smap = c.shardmap
        wanted = sorted(set(req.shards)) if req.shards is not None else [e.id for e in smap.shards]
        if bad := [s for s in wanted if s >= smap.num_shards]:
            raise BadRequest(f"shards: {bad} out of range (the cluster has {smap.num_shards} shards)")
        by_node: dict[str, list[int]] = {}
        for entry in smap.shards:
            if entry.id not in wanted:
                continue
            best: tuple[int, str] | None = None
            for node in entry.hosts():
                rec = c.registry.nodes.get(node)
                status = rec.replicas.get(entry.id) if rec is not None and rec.status in ("healthy", "draining") else None
                if status is not None and status.state == "active" and (best is None or status.applied_seq > best[0]):
                    best = (status.applied_seq, node)
            if best is None:
                raise Unavailable(f"shard {entry.id} has no active replica to snapshot; retry")
            by_node.setdefault(best[1], []).append(entry.id)
        replies = await asyncio.gather(*(self._snapshot_on(node, shards) for node, shards in by_node.items()))
        taken = sorted((t for r in replies for t in r), key=lambda t: t.shard)
        try:
            if c.settings.purge_interval:  # 0: the log is never purged
                await c.retention.purge([t.shard for t in taken])
        except Exception:  # the snapshots stand; the periodic pass purges later
            log.warning("purge after snapshot failed", exc_info=True)
        return SnapshotReply(shards=taken)

    async def _snapshot_on(self, node_id: str, shards: list[int]) -> list[SnapshotTaken]:
        subject = subjects.node_endpoint(node_id, "control")
        payload = encode(ControlRequest(op="snapshot", params={"shards": shards}))
        try:
            msg = await self.coord.nc.request(subject, payload, timeout=SNAPSHOT_TIMEOUT_S)
        except (NatsTimeout, NoRespondersError) as exc:
            raise Unavailable(f"node {node_id} did not answer the snapshot request ({type(exc).__name__}); retry") from None
        error = error_of(msg.headers, msg.data)
        if error is not None:
            raise error_for_code(error.code, f"node {node_id}: {error.description}")
        return msgspec.json.decode(msg.data, type=SnapshotReply).shards

    def _not_found(self, node_id: str) -> NoReturn:
        known = ", ".join(sorted(self.coord.registry.nodes)) or "none"
        raise NotFound(f"node: {node_id!r} is not a member of the cluster (known: {known})")

    async def _change_drain(self, req: DrainRequest) -> None:
        c = self.coord
        rec = c.registry.nodes.get(req.node)
        if rec is None:
            self._not_found(req.node)
        if req.action == "start" and not rec.draining:
            if rec.status != "healthy":
                raise Conflict(
                    f"node: {req.node} is {rec.status}; only a running node can be drained (a stopped node's "
                    "replicas move to other nodes TORUA_REASSIGN_DELAY after it stopped)"
                )
            rf = c.shardmap.replication_factor
            others = [n.id for n in c.registry.placement_nodes() if n.id != req.node]
            if len(others) < rf:
                raise Conflict(
                    f"node: draining {req.node} would leave {len(others)} node(s) to hold {rf} replicas of each "
                    "shard; add a node first"
                )
            await self._control(req.node, "drain")
        elif req.action == "cancel" and rec.draining:
            await self._control(req.node, "resume")
        if c.registry.set_draining(req.node, req.action == "start"):
            c.nudge()

    async def _control(self, node_id: str, op: str) -> None:
        subject = subjects.node_endpoint(node_id, "control")
        try:
            msg = await self.coord.nc.request(subject, encode(ControlRequest(op=op)), timeout=5.0)
        except (NatsTimeout, NoRespondersError) as exc:
            raise Unavailable(f"node {node_id} did not answer the {op} request ({type(exc).__name__}); retry") from None
        error = error_of(msg.headers, msg.data)
        if error is not None:
            raise error_for_code(error.code, f"node {node_id}: {error.description}")

    def _drain_reply(self, node_id: str) -> DrainReply:
        c = self.coord
        rec = c.registry.nodes.get(node_id)
        if rec is None:
            self._not_found(node_id)
        shards = drain_progress(node_id, c.shardmap.shards, c.planned_map().shards) if rec.draining else []
        return DrainReply(
            node=node_id,
            status=rec.status,  # type: ignore[arg-type]
            draining=rec.draining,
            done=rec.draining and not shards,
            remaining=len(shards),
            shards=shards,
        )

    async def _send(self, node_id: str, payload: bytes, timeout: float) -> BroadcastResult:
        subject = subjects.node_endpoint(node_id, "control")
        try:
            msg = await self.coord.nc.request(subject, payload, timeout=timeout)
        except (NatsTimeout, NoRespondersError) as exc:
            detail = ErrorDetail(code=503, description=f"node did not answer ({type(exc).__name__})")
            return BroadcastResult(node_id=node_id, ok=False, error=detail)
        error = error_of(msg.headers, msg.data)
        if error is not None:
            return BroadcastResult(node_id=node_id, ok=False, error=error)
        reply: Any = msgspec.json.decode(msg.data) if msg.data else None
        return BroadcastResult(node_id=node_id, ok=True, reply=reply)


async def start_cluster_service(coord: ClusterView) -> ServiceHandle:
    api = ClusterApi(coord)
    eps = [
        Endpoint("health", subjects.CLUSTER_HEALTH, api.health, Empty, "Is the leading coordinator up"),
        Endpoint("info", subjects.CLUSTER_INFO, api.info, Empty, "Cluster state, node and shard counts"),
        Endpoint("nodes", subjects.CLUSTER_NODES, api.nodes, Empty, "Every known node with status and shards"),
        Endpoint("shards", subjects.CLUSTER_SHARDS, api.shards, Empty, "The shard map: replicas per shard"),
        Endpoint(
            "broadcast",
            subjects.CLUSTER_BROADCAST,
            api.broadcast,
            BroadcastRequest,
            "Send a control op to every node and collect the replies",
            concurrent=True,
        ),
        Endpoint(
            "drain",
            subjects.CLUSTER_DRAIN,
            api.drain,
            DrainRequest,
            "Decommission a node: move its replicas away make-before-break; report progress",
            concurrent=True,
        ),
        Endpoint(
            "snapshot",
            subjects.CLUSTER_SNAPSHOT,
            api.snapshot,
            SnapshotRequest,
            "Snapshot shards into the object store now, then purge their logs below what is still needed",
            concurrent=True,
        ),
    ]
    return await add_endpoints(
        coord.nc,
        name=subjects.COORDINATOR_SERVICE,
        version=__version__,
        description="Torua cluster manager: membership, placement, shard map",
        endpoints=eps,
        metadata={"coordinator_id": coord.settings.coordinator_id},
    )
