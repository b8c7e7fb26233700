"""The node process: announce, heartbeat, follow the shard map, serve, and leave cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from torua import subjects
from torua.connect import connect
from torua.endpoints import ServiceHandle, encode
from torua.errors import NotFound
from torua.metrics import GaugeReading, metrics
from torua.tasks import end_task
from torua.version import __version__
from torua.wire import Announce, DigestReply, Heartbeat, NodeInfoReply, ShardMap
from torua_node.node.admin import start_node_service
from torua_node.node.identity import load_identity
from torua_node.node.replicas import ReplicaManager
from torua_node.router.api import DataService
from torua_node.settings import NodeSettings
from torua_node.shard.replica import ShardReplica
from torua_node.storage.digest import content_digest, counts
from torua_node.storage.schema import read_applied_seq
from torua_node.storage.store import Conn

__all__ = ["Node", "StartDataApi"]

log = logging.getLogger(__name__)

# How long shutdown waits for each background task to end.
TASK_STOP_S = 5.0

# Starts the data API (`torua-api`) on the node's connection, reading the node's current shard map;
# wired by the composition root (torua_node.main).
StartDataApi = Callable[[NATS, Callable[[], ShardMap | None]], Awaitable[DataService]]


class Node:
    def __init__(self, settings: NodeSettings, start_data_api: StartDataApi) -> None:
        self.settings = settings
        self._start_data_api = start_data_api
        ident = load_identity(settings.data_dir, settings.node_id)
        self.node_id, self.incarnation = ident.node_id, ident.incarnation
        self.replicas = ReplicaManager(
            settings.data_dir / "shards",
            node_id=self.node_id,
            buffer_pool_mb=settings.buffer_pool_mb,
            max_db_size_gb=settings.max_db_size_gb,
        )
        self.started = time.monotonic()
        self.draining = False
        self.shardmap: ShardMap | None = None
        self.nc: NATS = None  # type: ignore[assignment]
        self._kv: KeyValue | None = None
        self._hb_seq = 0
        self._left = False
        self._stop = asyncio.Event()
        self._decommission = True
        self._services: list[ServiceHandle] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.data: DataService | None = None
        metrics.add_gauges(self._replica_gauge)
        metrics.add_gauges(self._lag_gauge)
        metrics.add_gauges(self._cache_gauge)

    def _replica_gauge(self) -> GaugeReading:
        return "torua_replicas", "Shard replicas hosted by this node", ["node"], [([self.node_id], len(self.replicas.replicas))]

    def _cache_gauge(self) -> GaugeReading:
        if self.data is None:
            return "torua_result_cache", "Router result cache: hits, misses, entries", ["kind"], []
        cache = self.data.cache
        samples = [(["hits"], cache.hits), (["misses"], cache.misses), (["entries"], len(cache))]
        return "torua_result_cache", "Router result cache: hits, misses, entries", ["kind"], samples

    def _lag_gauge(self) -> GaugeReading:
        samples = [([str(s), r.state], float(r.lag)) for s, r in sorted(self.replicas.replicas.items())]
        return "torua_wal_lag", "Log entries a replica has not applied yet", ["shard", "state"], samples

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        self.nc = await connect(s.nats_url, name=f"torua-node-{self.node_id}", timeout=s.connect_timeout, service=True)
        self._services.append(await start_node_service(self))
        self.data = await self._start_data_api(self.nc, lambda: self.shardmap)
        self._services.append(self.data.service)
        await self._announce("join")
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._map_loop(), name="shardmap"),
        ]
        log.info("node %s up (incarnation %d)", self.node_id, self.incarnation)
        await self._stop.wait()
        if self._decommission:
            await self._drain_out()
        await self._shutdown()

    def stop(self, decommission: bool = True) -> None:
        """SIGTERM decommissions (replicas move away first); SIGINT just stops, keeping assignments."""
        self._decommission = decommission
        self._stop.set()

    async def _drain_out(self) -> None:
        """Make-before-break on the way out: keep serving until the map no longer needs us."""
        await self.set_draining(True)
        deadline = time.monotonic() + self.settings.drain_timeout
        while self._hosted_in_map() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # No heartbeat after "left" (e.g. from the reconcile that drops our last replicas): the
        # coordinator would list this node again. One connection's messages stay in order.
        self._left = True
        await self._announce("left")

    async def _shutdown(self) -> None:
        # end_task, not one cancel(): on Python 3.11 a cancel can be lost, and the process would not exit.
        await asyncio.gather(*(end_task(t, TASK_STOP_S) for t in self._tasks))
        for svc in self._services:
            await svc.stop()
        await self.replicas.close_all()
        await self.nc.drain()
        log.info("node %s left", self.node_id)

    def _hosted_in_map(self) -> bool:
        return self.shardmap is not None and bool(self.shardmap.shards_of(self.node_id))

    async def set_draining(self, draining: bool) -> None:
        self.draining = draining
        await self._announce("leave" if draining else "join")
        await self._send_heartbeat()

    # --- membership ---------------------------------------------------------------------------

    async def _announce(self, event: str) -> None:
        msg = Announce(
            node_id=self.node_id,
            incarnation=self.incarnation,
            event=event,  # type: ignore[arg-type]
            version=__version__,
            capacity=self.settings.node_max_shards,
        )
        await self.nc.publish(subjects.ANNOUNCE, encode(msg))
        await self.nc.flush()

    async def _send_heartbeat(self) -> None:
        if self._left:
            return
        self._hb_seq += 1
        hb = Heartbeat(
            node_id=self.node_id,
            incarnation=self.incarnation,
            seq=self._hb_seq,
            version=__version__,
            uptime_s=time.monotonic() - self.started,
            capacity=self.settings.node_max_shards,
            draining=self.draining,
            replicas=self.replicas.statuses(),
        )
        await self.nc.publish(subjects.heartbeat(self.node_id), encode(hb))

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._send_heartbeat()
            except Exception:
                log.debug("heartbeat failed", exc_info=True)
            await asyncio.sleep(self.settings.heartbeat_interval)

    # --- shard map ----------------------------------------------------------------------------

    async def _bucket(self) -> KeyValue:
        while self._kv is None:
            try:
                self._kv = await self.nc.jetstream().key_value(subjects.KV_BUCKET)
            except BucketNotFoundError:
                await asyncio.sleep(0.5)  # the coordinator has not created it yet
        return self._kv

    async def _map_loop(self) -> None:
        """Follow the map by watching KV, and re-read it periodically in case a watch was lost."""
        kv = await self._bucket()
        watcher = asyncio.create_task(self._watch(kv))
        try:
            while True:
                try:
                    entry = await kv.get(subjects.KV_SHARDMAP)
                    if entry.value:
                        await self._apply_map(msgspec.json.decode(entry.value, type=ShardMap))
                except KeyNotFoundError:
                    pass
                except Exception:
                    log.warning("reading the shard map failed", exc_info=True)
                await asyncio.sleep(max(self.settings.heartbeat_interval, 1.0))
        finally:
            await end_task(watcher, TASK_STOP_S)

    async def _watch(self, kv: KeyValue) -> None:
        while True:
            try:
                watcher = await kv.watch(subjects.KV_SHARDMAP)
                async for entry in watcher:
                    if entry is not None and entry.value:
                        await self._apply_map(msgspec.json.decode(entry.value, type=ShardMap))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("shard map watch ended", exc_info=True)
                await asyncio.sleep(1.0)

    async def _apply_map(self, smap: ShardMap) -> None:
        if self.shardmap is not None and smap.revision < self.shardmap.revision:
            return
        self.shardmap = smap
        if await self.replicas.reconcile(smap.shards_of(self.node_id), self.nc, smap.embedding_dim):
            await self._send_heartbeat()  # tell the coordinator at once, not at the next beat

    async def info(self) -> NodeInfoReply:
        return NodeInfoReply(
            node_id=self.node_id,
            incarnation=self.incarnation,
            version=__version__,
            uptime_s=round(time.monotonic() - self.started, 3),
            draining=self.draining,
            capacity=self.settings.node_max_shards,
            replicas=[await self._replica_info(r) for _, r in sorted(self.replicas.replicas.items())],
        )

    async def _replica_info(self, replica: ShardReplica) -> dict[str, Any]:
        info: dict[str, Any] = msgspec.to_builtins(replica.status())
        if replica.state in ("recovering", "active"):
            info["counts"] = await replica.store.call(counts)
        return info

    async def digest(self, shard: int) -> DigestReply:
        replica = self.replicas.replicas.get(shard)
        if replica is None or replica.state not in ("recovering", "active"):
            raise NotFound(f"shard {shard} has no open replica on node {self.node_id}")
        seq, value = await replica.store.call(_seq_and_digest)
        return DigestReply(shard=shard, applied_seq=seq, digest=value)


def _seq_and_digest(conn: Conn) -> tuple[int, str]:
    # One call on the shard thread: the position and the content are read at the same point.
    return read_applied_seq(conn), content_digest(conn)
