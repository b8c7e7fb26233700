"""The per-node admin API: `torua.node.<id>.health|info|control`."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from nats.aio.client import Client as NATS

from torua import subjects
from torua.endpoints import Endpoint, ServiceHandle, add_endpoints
from torua.errors import BadRequest
from torua.version import __version__
from torua.wire import (
    ControlRequest,
    DigestReply,
    DigestRequest,
    Empty,
    NodeHealthReply,
    NodeInfoReply,
    SnapshotReply,
    SnapshotTaken,
)

__all__ = ["AdminTarget", "start_node_service", "CONTROL_OPS"]

CONTROL_OPS = ("ping", "info", "drain", "resume", "set_log_level", "rebuild", "snapshot")
_LEVELS = ("debug", "info", "warning", "error", "critical")


class AdminTarget(Protocol):
    """What the admin API reads and drives of its node (torua_node.node.process.Node)."""

    @property
    def nc(self) -> NATS: ...

    @property
    def node_id(self) -> str: ...

    @property
    def incarnation(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    async def info(self) -> NodeInfoReply: ...

    async def digest(self, req: DigestRequest) -> DigestReply: ...

    async def rebuild(self, shards: list[int] | None) -> list[int]: ...

    async def snapshot(self, shards: list[int]) -> list[SnapshotTaken]: ...

    async def set_draining(self, draining: bool) -> None: ...


class NodeApi:
    def __init__(self, node: AdminTarget) -> None:
        self.node = node

    async def health(self, _: Empty) -> NodeHealthReply:
        n = self.node
        return NodeHealthReply(status="ok", node_id=n.node_id, incarnation=n.incarnation, draining=n.draining)

    async def info(self, _: Empty) -> NodeInfoReply:
        return await self.node.info()

    async def digest(self, req: DigestRequest) -> DigestReply:
        return await self.node.digest(req)

    async def control(self, req: ControlRequest) -> Any:
        n = self.node
        match req.op:
            case "ping":
                return {"pong": True, "node_id": n.node_id}
            case "info":
                return await n.info()
            case "drain":
                await n.set_draining(True)
                return {"draining": True}
            case "resume":
                await n.set_draining(False)
                return {"draining": False}
            case "set_log_level":
                level = req.params.get("level")
                if not isinstance(level, str) or level.lower() not in _LEVELS:
                    raise BadRequest(f"params.level must be one of {', '.join(_LEVELS)}")
                logging.getLogger().setLevel(level.upper())
                return {"level": level.lower()}
            case "rebuild":
                return {"rebuilt": await n.rebuild(_rebuild_shards(req.params))}
            case "snapshot":
                # {"shards": [n, ...]}: snapshot these replicas now (torua.cluster.snapshot sends it).
                shards = req.params.get("shards")
                if req.params.keys() != {"shards"} or not isinstance(shards, list) or not all(map(_is_shard, shards)):
                    raise BadRequest('params: snapshot takes {"shards": [n, ...]}')
                return SnapshotReply(shards=await n.snapshot(shards))
        raise BadRequest(f"unknown op {req.op!r}: expected one of {', '.join(CONTROL_OPS)}")


def _rebuild_shards(params: dict[str, Any]) -> list[int] | None:
    """`{"shard": n}`, `{"shards": [n, ...]}`, or `{"diverged": true}` (None: every diverged replica)."""
    if params.get("diverged") is True and params.keys() == {"diverged"}:
        return None
    if params.keys() == {"shard"} and _is_shard(params["shard"]):
        return [params["shard"]]
    if params.keys() == {"shards"} and isinstance(params["shards"], list) and all(map(_is_shard, params["shards"])):
        return list(params["shards"])
    raise BadRequest('params: rebuild takes {"shard": n}, {"shards": [n, ...]} or {"diverged": true}')


def _is_shard(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def start_node_service(node: AdminTarget) -> ServiceHandle:
    api = NodeApi(node)
    nid = node.node_id
    eps = [
        Endpoint("health", subjects.node_endpoint(nid, "health"), api.health, Empty, "Is this node up"),
        Endpoint(
            "info",
            subjects.node_endpoint(nid, "info"),
            api.info,
            Empty,
            "Replicas hosted: state, applied_seq and counts",
            concurrent=True,
        ),
        Endpoint(
            "digest",
            subjects.node_endpoint(nid, "digest"),
            api.digest,
            DigestRequest,
            "Content hash of one shard replica, equal on replicas at the same applied_seq",
            concurrent=True,
        ),
        Endpoint(
            "control",
            subjects.node_endpoint(nid, "control"),
            api.control,
            ControlRequest,
            f"Operations: {', '.join(CONTROL_OPS)}",
            concurrent=True,
        ),
    ]
    return await add_endpoints(
        node.nc,
        name=subjects.NODE_SERVICE,
        version=__version__,
        description=f"Torua node {nid}: shard replicas and admin",
        endpoints=eps,
        metadata={"node_id": nid},
    )
