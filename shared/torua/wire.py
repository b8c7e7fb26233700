"""Wire messages of the cluster plane (membership, shard map, admin API) as msgspec Structs.

Requests forbid unknown fields so a typo in hand-typed `nats req` JSON is an error, not a silent
default; replies and internal messages accept unknown fields so newer peers can add some.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
    "DigestCheck",
    "DrainRequest",
    "DrainShard",
    "DrainReply",
    "SnapshotRequest",
    "SnapshotTaken",
    "SnapshotReply",
]

# diverged: the log is not the one this replica applied (re-created, or lost entries it applied):
# the replica stops serving and applying (docs/consistency.md, "The log's identity").
ReplicaState = Literal["opening", "recovering", "active", "closing", "failed", "diverged"]
NodeStatus = Literal["healthy", "unhealthy", "dead", "draining"]
ClusterState = Literal["green", "yellow", "red"]


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Base of every public request. Not tracked by the garbage collector: decoded requests are
    trees (no cycles), and a bulk write decodes hundreds of thousands of them."""


class Reply(msgspec.Struct, kw_only=True):
    """Base of every reply."""


class Empty(Request):
    pass


class ErrorDetail(Reply, omit_defaults=True):
    code: int
    description: str
    # A 503 from a full queue: how long to wait before retrying (absent otherwise).
    retry_after_ms: int | None = None


class ErrorBody(Reply):
    error: ErrorDetail


# --- membership -------------------------------------------------------------------------------


class DigestCheck(Reply):
    """The last comparison of this replica's content digest with its peers', at one log position."""

    seq: int  # the log position every compared replica held still at
    digest: str  # this replica's
    peers: dict[str, str] = msgspec.field(default_factory=dict)  # node id -> its digest at `seq`
    match: bool = True  # every peer's digest equals this replica's
    checked_at: float = 0.0  # epoch seconds


class ReplicaStatus(Reply):
    shard: int
    state: ReplicaState
    applied_seq: int = 0
    error: str | None = None
    digest: DigestCheck | None = None


class Announce(Reply):
    """`join`: up and taking replicas; `leave`: up, draining (its replicas move away); `left`:
    drained and gone for good; `stop`: stopping, keeping its data (absent until it returns)."""

    node_id: str
    incarnation: int
    event: Literal["join", "leave", "left", "stop"]
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
    # The term of the leader that published it (LeaderLease.epoch): never decreases. Nodes ignore a
    # map older than the newest they have seen: lower epoch, or the same epoch and lower revision.
    epoch: int = 0

    def shards_of(self, node_id: str) -> set[int]:
        return {entry.id for entry in self.shards if node_id in entry.hosts()}


class LeaderLease(Reply):
    holder: str
    # For people only: standbys judge expiry by their own monotonic clock (torua_coordinator/leader.py).
    expires_at: float
    # The leader's term: one more than the previous holder's at every new leadership.
    epoch: int = 0


# --- admin API --------------------------------------------------------------------------------


class ControlRequest(Request):
    op: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class HealthReply(Reply):
    status: str
    leader: bool
    # The cluster's state and what makes it less than green, one line per problem naming its shard.
    state: ClusterState | None = None
    problems: list[str] = msgspec.field(default_factory=list)


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
    # What makes the state less than green, one line each, naming the shard (and node).
    problems: list[str] = msgspec.field(default_factory=list)


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
    # Being decommissioned (torua.cluster.drain); stays true while the node is stopped.
    draining: bool = False


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
    # Hold apply at this log position (a sequence of the shard's subject) and hash the content
    # there, so replicas are compared at the same point; the reply's applied_seq says where it was
    # taken (later than `at` if the replica had already passed it).
    at: int | None = None
    # The asking replica's digest at `at`, and its node: this replica compares and records the result.
    expect: str | None = None
    peer: str | None = None


class DigestReply(Reply):
    shard: int
    applied_seq: int
    digest: str
    match: bool | None = None  # with `expect`: whether this replica's digest at `at` equals it


# --- draining (decommissioning) a node ----------------------------------------------------------

NodeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
DrainAction = Literal["start", "status", "cancel"]


class DrainRequest(Request):
    """`start` (default) drains the node, `status` only reports, `cancel` takes it back into placement."""

    node: NodeId
    action: DrainAction = "start"


class DrainShard(Reply):
    shard: int
    # moving: placement has moved it; the copies in `to` are catching up (the node's copy serves until
    # they have). blocked: no other node can take it (capacity), so it stays on the node.
    state: Literal["moving", "blocked"]
    to: list[str] = msgspec.field(default_factory=list)


class DrainReply(Reply):
    node: str
    status: NodeStatus
    draining: bool
    # Draining and the shard map no longer gives the node any replica: it can be stopped for good.
    done: bool
    remaining: int  # shards the node still hosts
    shards: list[DrainShard] = msgspec.field(default_factory=list)


# --- snapshots (torua.cluster.snapshot; docs/operations.md, "Log retention") ----------------------


class SnapshotRequest(Request):
    """Snapshot these shards now (every shard when absent)."""

    shards: list[Annotated[int, msgspec.Meta(ge=0)]] | None = None


class SnapshotTaken(Reply):
    shard: int
    seq: int  # the log position (applied_seq) the snapshot stands for
    bytes: int
    node: str = ""  # the node whose replica took it


class SnapshotReply(Reply):
    shards: list[SnapshotTaken]
