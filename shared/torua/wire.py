"""Wire messages of the cluster plane (membership, shard map, admin API) as msgspec Structs.

Requests forbid unknown fields so a typo in hand-typed `nats req` JSON is an error, not a silent
default; replies and internal messages accept unknown fields so newer peers can add some.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Request",
    "Reply",
    "Empty",
    "ReplicaStatus",
    "Announce",
    "Heartbeat",
    "ShardEntry",
    "ShardMap",
    "LeaderLease",
    "ControlRequest",
    "HealthReply",
    "NodeHealthReply",
    "ClusterInfo",
    "NodeCounts",
    "ShardCounts",
    "NodeView",
    "NodesReply",
    "BroadcastRequest",
    "BroadcastResult",
    "BroadcastReply",
    "ErrorDetail",
    "ErrorBody",
    "NodeInfoReply",
    "DigestRequest",
    "DigestReply",
]

ReplicaState = Literal["opening", "recovering", "active", "closing", "failed"]
NodeStatus = Literal["healthy", "unhealthy", "dead", "draining"]
ClusterState = Literal["green", "yellow", "red"]


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Base of every public request. Not tracked by the garbage collector: decoded requests are
    trees (no cycles), and a bulk write decodes hundreds of thousands of them."""


class Reply(msgspec.Struct, kw_only=True):
    """Base of every reply."""


class Empty(Request):
    pass


class ErrorDetail(Reply):
    code: int
    description: str


class ErrorBody(Reply):
    error: ErrorDetail


# --- membership -------------------------------------------------------------------------------


class ReplicaStatus(Reply):
    shard: int
    state: ReplicaState
    applied_seq: int = 0
    error: str | None = None


class Announce(Reply):
    node_id: str
    incarnation: int
    event: Literal["join", "leave", "left"]
    version: str
    capacity: int | None = None


class Heartbeat(Reply):
    node_id: str
    incarnation: int
    seq: int
    version: str
    uptime_s: float
    capacity: int | None = None
    draining: bool = False
    replicas: list[ReplicaStatus] = msgspec.field(default_factory=list)


# --- shard map (KV bucket torua-cluster, key shardmap; also the cluster.shards reply) ----------


class ShardEntry(Reply):
    id: int
    replicas: list[str]
    state: str = "unassigned"
    # Old replicas kept serving until every new replica is active (make-before-break).
    leaving: list[str] = msgspec.field(default_factory=list)
    active: list[str] = msgspec.field(default_factory=list)

    def hosts(self) -> list[str]:
        return self.replicas + [n for n in self.leaving if n not in self.replicas]


class ShardMap(Reply):
    revision: int
    num_shards: int
    replication_factor: int
    shards: list[ShardEntry]
    cluster_id: str = ""
    embedding_dim: int = 0
    updated_at: float = 0.0

    def shards_of(self, node_id: str) -> set[int]:
        return {entry.id for entry in self.shards if node_id in entry.hosts()}


class LeaderLease(Reply):
    holder: str
    expires_at: float


# --- admin API --------------------------------------------------------------------------------


class ControlRequest(Request):
    op: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class HealthReply(Reply):
    status: str
    leader: bool


class NodeHealthReply(Reply):
    status: str
    node_id: str
    incarnation: int
    draining: bool = False


class NodeCounts(Reply):
    total: int
    healthy: int


class ShardCounts(Reply):
    total: int
    replication_factor: int
    active: int
    initializing: int
    unassigned: int


class ClusterInfo(Reply):
    cluster_id: str
    version: str
    state: ClusterState
    nodes: NodeCounts
    shards: ShardCounts
    embedding_dim: int
    map_revision: int
    uptime_s: float
    leader: str = ""


class NodeView(Reply):
    id: str
    status: NodeStatus
    version: str
    shards: list[int]
    last_heartbeat: float | None
    uptime_s: float
    capacity: int | None
    available_capacity: int | None
    incarnation: int = 0


class NodesReply(Reply):
    nodes: list[NodeView]


class BroadcastRequest(Request):
    op: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: float = 5.0


class BroadcastResult(Reply):
    node_id: str
    ok: bool
    reply: Any = None
    error: ErrorDetail | None = None


class BroadcastReply(Reply):
    sent_to: int
    results: list[BroadcastResult]


class NodeInfoReply(Reply):
    node_id: str
    incarnation: int
    version: str
    uptime_s: float
    draining: bool
    capacity: int | None
    replicas: list[dict[str, Any]]


class DigestRequest(Request):
    shard: int


class DigestReply(Reply):
    shard: int
    applied_seq: int
    digest: str
