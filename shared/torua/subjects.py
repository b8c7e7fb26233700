"""Every NATS subject, stream and bucket name Torua uses, in one place."""

from __future__ import annotations

__all__ = [
    "ANNOUNCE",
    "HEARTBEAT_ALL",
    "KV_BUCKET",
    "KV_SHARDMAP",
    "KV_LEADER",
    "VERSIONS_BUCKET",
    "CLUSTER_HEALTH",
    "CLUSTER_INFO",
    "CLUSTER_NODES",
    "CLUSTER_SHARDS",
    "CLUSTER_BROADCAST",
    "CLUSTER_DRAIN",
    "CLUSTER_SNAPSHOT",
    "SNAPSHOT_BUCKET",
    "KV_PURGED_PREFIX",
    "purged_key",
    "GRAPH_UPSERT",
    "GRAPH_DELETE",
    "GRAPH_GET",
    "GRAPH_NEIGHBORS",
    "GRAPH_QUERY",
    "SEARCH_VECTOR",
    "SEARCH_TEXT",
    "SEARCH_HYBRID",
    "RAG_RETRIEVE",
    "RAG_ANSWER",
    "KV_PUT",
    "KV_GET",
    "KV_DELETE",
    "COORDINATOR_SERVICE",
    "NODE_SERVICE",
    "API_SERVICE",
    "API_QUEUE",
    "SHARD_SERVICE",
    "SHARD_APPLIED_ALL",
    "WAL_STREAM",
    "WAL_SUBJECTS",
    "heartbeat",
    "node_endpoint",
    "shard_applied",
    "APPLIED_RESET",
    "shard_endpoint",
    "SHARD_VECTOR_ALL",
    "shard_node",
    "shard_queue",
    "wal_subject",
]

ANNOUNCE = "torua.node.announce"
HEARTBEAT_ALL = "torua.node.heartbeat.*"

KV_BUCKET = "torua-cluster"
KV_SHARDMAP = "shardmap"
KV_LEADER = "leader"
# `purged.<shard>` in KV_BUCKET: below which sequence the shard's log entries were purged (written
# by the purging coordinator before it purges, read by replicas deciding whether to restore).
KV_PURGED_PREFIX = "purged"

# The JetStream object store holding shard snapshots (docs/operations.md, "Log retention").
SNAPSHOT_BUCKET = "torua-snapshots"
# Each write's version by its request id, for the log's duplicate window (torua.streams): a retry
# stores the version its first attempt got (docs/consistency.md, "Convergence").
VERSIONS_BUCKET = "torua-write-versions"

CLUSTER_HEALTH = "torua.cluster.health"
CLUSTER_INFO = "torua.cluster.info"
CLUSTER_NODES = "torua.cluster.nodes"
CLUSTER_SHARDS = "torua.cluster.shards"
CLUSTER_BROADCAST = "torua.cluster.broadcast"
# Decommission a node: move its replicas away make-before-break, and report progress.
CLUSTER_DRAIN = "torua.cluster.drain"
# Snapshot shards now (into SNAPSHOT_BUCKET) and purge the log below what is still needed.
CLUSTER_SNAPSHOT = "torua.cluster.snapshot"

GRAPH_UPSERT = "torua.graph.upsert"
GRAPH_DELETE = "torua.graph.delete"
GRAPH_GET = "torua.graph.get"
GRAPH_NEIGHBORS = "torua.graph.neighbors"
GRAPH_QUERY = "torua.graph.query"
SEARCH_VECTOR = "torua.search.vector"
SEARCH_TEXT = "torua.search.text"
SEARCH_HYBRID = "torua.search.hybrid"
RAG_RETRIEVE = "torua.rag.retrieve"
RAG_ANSWER = "torua.rag.answer"
KV_PUT = "torua.kv.put"
KV_GET = "torua.kv.get"
KV_DELETE = "torua.kv.delete"

COORDINATOR_SERVICE = "torua-coordinator"
NODE_SERVICE = "torua-node"
API_SERVICE = "torua-api"
API_QUEUE = "torua-api"
SHARD_SERVICE = "torua-shard"

# The write-ahead log: one JetStream stream, one subject per shard.
WAL_STREAM = "TORUA_WAL"
WAL_SUBJECTS = "torua.wal.>"

# Replicas announce here how far they have applied (the payload is the sequence, as text).
SHARD_APPLIED_ALL = "torua.shard.*.applied"


def heartbeat(node_id: str) -> str:
    return f"torua.node.heartbeat.{node_id}"


def node_endpoint(node_id: str, name: str) -> str:
    """`torua.node.<id>.<name>`: health, info, control, digest."""
    return f"torua.node.{node_id}.{name}"


def wal_subject(shard: int) -> str:
    """The log subject of one shard: `torua.wal.<shard>`."""
    return f"torua.wal.{shard}"


def shard_endpoint(shard: int, op: str) -> str:
    """`torua.shard.<n>.<op>`: the router's requests to one shard, answered by its queue group."""
    return f"torua.shard.{shard}.{op}"


# Vector search of every shard at once, answered by every node (no queue group) for the shards it
# serves: the Python client's direct search (docs/api.md, "Direct vector search"). Matches
# `torua.shard.*.vector`, the shards' own vector search, which clients may also request.
SHARD_VECTOR_ALL = "torua.shard.all.vector"


def shard_node(node_id: str) -> str:
    """`torua.shard.node.<id>.batch`: one operation for several shards, answered by that node for the
    ones its replicas serve (a router's fan-out round: one message per node, not one per shard).
    Five tokens, so that no shard's `torua.shard.<n>.<op>` and no client permission matches it."""
    return f"torua.shard.node.{node_id}.batch"


def shard_queue(shard: int) -> str:
    """The queue group of one shard's caught-up replicas."""
    return f"shard-{shard}"


# The payload on shard_applied(n) that says a replica of n was rebuilt from the log (which may have
# been re-created: positions from before do not compare with those after).
APPLIED_RESET = b"reset"


def shard_applied(shard: int) -> str:
    """`torua.shard.<n>.applied`: where a replica announces its applied position."""
    return f"torua.shard.{shard}.applied"


def purged_key(shard: int) -> str:
    """The KV key (in KV_BUCKET) recording how far shard `shard`'s log was purged."""
    return f"{KV_PURGED_PREFIX}.{shard}"
