"""The node process: announce, heartbeat, follow the shard map, serve, and stop cleanly.

Stopping (SIGTERM or SIGINT) keeps the node's data: it tells the coordinator it is stopping (so
its replicas count as absent at once, and move elsewhere only if it stays away longer than
`TORUA_REASSIGN_DELAY`, as after a failure), stops serving, lets each replica finish the batch it
is applying and closes every Kuzu database. On return it reopens them at their `applied_seq`.

Decommissioning is explicit (`torua.cluster.drain`, or the `drain` control op): the node is then
*draining*, a flag it keeps on disk, so it stays drained across restarts until the drain is
cancelled. A drained node that holds no replica leaves the cluster when it stops.
"""

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
from torua.wire import Announce, DigestReply, DigestRequest, Heartbeat, NodeInfoReply, ShardMap, SnapshotTaken
from torua_node.node.admin import start_node_service
from torua_node.node.audit import DigestAudit, answer_digest
from torua_node.node.identity import load_identity
from torua_node.node.mapfence import MapFence
from torua_node.node.replicas import LocalReads, ReplicaManager
from torua_node.router.api import DataService, LocalShards
from torua_node.settings import NodeSettings, QueryLimits, SnapshotPolicy
from torua_node.shard.replica import ShardReplica
from torua_node.storage.digest import counts

__all__ = ["Node", "StartDataApi"]

log = logging.getLogger(__name__)

# How long shutdown waits for each background task to end.
TASK_STOP_S = 5.0
# How long stopping lets requests already taken by the data API and admin services finish.
SERVICE_STOP_S = 3.0
# How long stopping waits on NATS for its last announcement, and to flush the connection.
NATS_STOP_S = 2.0
# The file in the data dir that says the node is being decommissioned (it survives restarts).
DRAINING_FILE = "draining"

# Starts the data API (`torua-api`) on the node's connection, reading the node's current shard map
# and answering point reads from the node's own replicas where it can; wired by the composition
# root (torua_node.main).
StartDataApi = Callable[[NATS, Callable[[], ShardMap | None], LocalShards], Awaitable[DataService]]


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
            query_limits=QueryLimits.of(settings),
            snapshots=SnapshotPolicy.of(settings),
        )
        # The router's in-process path to these replicas (point reads without a NATS round trip).
        self.local_reads = LocalReads(self.replicas)
        self.started = time.monotonic()
        self._draining_file = settings.data_dir / DRAINING_FILE
        self.draining = self._draining_file.exists()
        self.shardmap: ShardMap | None = None
        self._fence = MapFence()  # never follow a map older than the newest seen
        self.nc: NATS = None  # type: ignore[assignment]
        self._kv: KeyValue | None = None
        self._hb_seq = 0
        self._silent = False  # no heartbeat after announcing stop or left
        self._stop = asyncio.Event()
        self._services: list[ServiceHandle] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.data: DataService | None = None
        metrics.add_gauges(self._replica_gauge)
        metrics.add_gauges(self._lag_gauge)
        metrics.add_gauges(self._cache_gauge)
        metrics.add_gauges(self.local_reads.gauge)

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
        self.nc = await connect(
            s.nats_url, name=f"torua-node-{self.node_id}", timeout=s.connect_timeout, service=True, auth=s.nats_auth
        )
        self._services.append(await start_node_service(self))
        self.data = await self._start_data_api(self.nc, lambda: self.shardmap, self.local_reads)
        self._services.append(self.data.service)
        await self._announce("leave" if self.draining else "join")
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._map_loop(), name="shardmap"),
            asyncio.create_task(
                DigestAudit(self.nc, self.node_id, self.replicas, lambda: self.shardmap, s.digest_interval).run(),
                name="digest-audit",
            ),
        ]
        log.info("node %s up (incarnation %d%s)", self.node_id, self.incarnation, ", draining" if self.draining else "")
        await self._stop.wait()
        await self._shutdown()

    def stop(self) -> None:
        """SIGTERM and SIGINT: stop gracefully, keeping the data (see the module docstring)."""
        self._stop.set()

    async def _shutdown(self) -> None:
        started = time.monotonic()
        # No heartbeat, and no new map, from here on. end_task, not one cancel(): on Python 3.11 a
        # cancel can be lost, and the process would not exit.
        await asyncio.gather(*(end_task(t, TASK_STOP_S) for t in self._tasks))
        self._silent = True
        # A drained node that holds nothing is gone for good; any other is coming back.
        gone = self.draining and not self._hosted_in_map() and not self.replicas.replicas
        try:
            await asyncio.wait_for(self._announce("left" if gone else "stop"), NATS_STOP_S)
        except Exception:  # NATS unreachable: the coordinator notices the silence instead
            log.warning("could not announce the stop", exc_info=True)
        # Stop serving: the router and admin endpoints answer what they have taken, and take no more.
        await asyncio.gather(*(svc.stop(SERVICE_STOP_S) for svc in self._services))
        # Each replica stops serving, finishes the batch it is applying, and closes its database.
        await self.replicas.close_all()
        try:
            await asyncio.wait_for(self.nc.drain(), NATS_STOP_S)
        except Exception:  # noqa: BLE001 - NATS unreachable: nothing left to send anyway
            await self.nc.close()
        log.info(
            "node %s %s in %.1fs", self.node_id,
            "left the cluster" if gone else "stopped, keeping its data,", time.monotonic() - started,
        )

    def _hosted_in_map(self) -> bool:
        return self.shardmap is not None and bool(self.shardmap.shards_of(self.node_id))

    async def set_draining(self, draining: bool) -> None:
        """Start or cancel decommissioning; kept on disk, so a restart does not undo it."""
        if draining:
            self._draining_file.write_text("draining: torua.cluster.drain moves this node's replicas away\n")
        else:
            self._draining_file.unlink(missing_ok=True)
        self.draining = draining
        if not self._silent:  # once stopping, the coordinator has heard the last of this process
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
        if self._silent:
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
        if not self._fence.admit(smap.epoch, smap.revision):
            log.info("ignoring shard map epoch %d revision %d: seen epoch %d revision %d",
                     smap.epoch, smap.revision, self._fence.epoch, self._fence.revision)
            return
        self.shardmap = smap
        # No await before reconcile takes its (FIFO) lock: maps are reconciled in the order admitted.
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
        # Where this replica's database stood when this process opened it (0: new, or rebuilt).
        info["opened_at_seq"] = self.replicas.opened_at.get(replica.shard, 0)
        # The snapshot position it was restored from, if it was (None: its own database, or replayed).
        info["restored_from"] = replica.restored_from
        if replica.state in ("recovering", "active"):
            info["counts"] = await replica.store.call(counts)
        return info

    async def digest(self, req: DigestRequest) -> DigestReply:
        return await answer_digest(self.replicas.replicas.get(req.shard), req, self.node_id)

    async def snapshot(self, shards: list[int]) -> list[SnapshotTaken]:
        """Snapshot these shards' replicas now (docs/operations.md, "Log retention")."""
        hosted = self.replicas.replicas
        if missing := sorted(set(shards) - hosted.keys()):
            raise NotFound(f"params: shard(s) {missing} have no replica on node {self.node_id}")
        return list(await asyncio.gather(*(hosted[s].snapshot() for s in sorted(set(shards)))))

    async def rebuild(self, shards: list[int] | None) -> list[int]:
        """Rebuild replicas from the log (node/audit.py, docs/operations.md): these shards, or
        (None) every replica whose log diverged."""
        hosted = self.replicas.replicas
        if shards is None:
            shards = [s for s, r in hosted.items() if r.state == "diverged"]
        elif missing := sorted(set(shards) - hosted.keys()):
            raise NotFound(f"params: shard(s) {missing} have no replica on node {self.node_id}")
        dim = self.shardmap.embedding_dim if self.shardmap is not None else 0
        rebuilt = await self.replicas.rebuild(shards, self.nc, dim)
        if rebuilt:
            await self._send_heartbeat()
        return rebuilt
