"""The cluster admin API (`torua.cluster.*`), served by the leading coordinator only."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from torua import subjects
from torua.endpoints import Endpoint, ServiceHandle, add_endpoints, encode, error_of
from torua.version import __version__
from torua.wire import (
    BroadcastReply,
    BroadcastRequest,
    BroadcastResult,
    ClusterInfo,
    ControlRequest,
    Empty,
    ErrorDetail,
    HealthReply,
    NodeCounts,
    NodesReply,
    ShardMap,
)
from torua_coordinator.leader import Lease
from torua_coordinator.registry import Registry
from torua_coordinator.settings import CoordinatorSettings
from torua_coordinator.shardmap import assignments_by_node, cluster_state, replica_counts

__all__ = ["ClusterView", "start_cluster_service"]


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


class ClusterApi:
    def __init__(self, coord: ClusterView) -> None:
        self.coord = coord

    async def health(self, _: Empty) -> HealthReply:
        return HealthReply(status="ok", leader=self.coord.lease.held)

    async def info(self, _: Empty) -> ClusterInfo:
        c = self.coord
        smap = c.shardmap
        return ClusterInfo(
            cluster_id=smap.cluster_id,
            version=__version__,
            state=cluster_state(smap.shards, smap.replication_factor),
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
    ]
    return await add_endpoints(
        coord.nc,
        name=subjects.COORDINATOR_SERVICE,
        version=__version__,
        description="Torua cluster manager: membership, placement, shard map",
        endpoints=eps,
        metadata={"coordinator_id": coord.settings.coordinator_id},
    )
