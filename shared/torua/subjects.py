"""Every NATS subject, stream and bucket name Torua uses, in one place."""

from __future__ import annotations

__all__ = [
    "ANNOUNCE",
    "HEARTBEAT_ALL",
    "KV_BUCKET",
    "KV_SHARDMAP",
    "KV_LEADER",
    "CLUSTER_HEALTH",
    "CLUSTER_INFO",
    "CLUSTER_NODES",
    "CLUSTER_SHARDS",
    "CLUSTER_BROADCAST",
    "COORDINATOR_SERVICE",
    "NODE_SERVICE",
    "API_SERVICE",
    "API_QUEUE",
    "heartbeat",
    "node_endpoint",
]

ANNOUNCE = "torua.node.announce"
HEARTBEAT_ALL = "torua.node.heartbeat.*"

KV_BUCKET = "torua-cluster"
KV_SHARDMAP = "shardmap"
KV_LEADER = "leader"

CLUSTER_HEALTH = "torua.cluster.health"
CLUSTER_INFO = "torua.cluster.info"
CLUSTER_NODES = "torua.cluster.nodes"
CLUSTER_SHARDS = "torua.cluster.shards"
CLUSTER_BROADCAST = "torua.cluster.broadcast"

COORDINATOR_SERVICE = "torua-coordinator"
NODE_SERVICE = "torua-node"
API_SERVICE = "torua-api"
API_QUEUE = "torua-api"


def heartbeat(node_id: str) -> str:
    return f"torua.node.heartbeat.{node_id}"


def node_endpoint(node_id: str, name: str) -> str:
    """`torua.node.<id>.<name>`: health, info, control, digest."""
    return f"torua.node.{node_id}.{name}"
