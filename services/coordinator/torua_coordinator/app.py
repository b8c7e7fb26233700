"""The coordinator process: follows membership, and while it leads, keeps the shard map in KV."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from torua import subjects
from torua.connect import connect
from torua.endpoints import ServiceHandle
from torua.errors import ConfigError
from torua.metrics import GaugeReading, metrics
from torua.streams import ensure_bucket, ensure_snapshot_bucket, ensure_versions_bucket, ensure_wal_stream
from torua.wire import Announce, Heartbeat, ShardEntry, ShardMap
from torua_coordinator.health import PROBLEM_KINDS, cluster_health
from torua_coordinator.leader import Lease
from torua_coordinator.placement import place
from torua_coordinator.registry import Registry
from torua_coordinator.retention import Retention
from torua_coordinator.service import start_cluster_service
from torua_coordinator.settings import CoordinatorSettings
from torua_coordinator.shardmap import next_entries, replica_counts, same_layout

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)

NODE_STATUSES = ("healthy", "unhealthy", "dead", "draining")


class Coordinator:
    # Set by run(), before anything reads them.
    nc: NATS
    kv: KeyValue
    lease: Lease
    retention: Retention

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.node_timeout, settings.reassign_delay)
        self.started = time.monotonic()
        self._map: ShardMap | None = None
        self._kv_revision = 0
        # After taking over, no map change before this (monotonic): one heartbeat window.
        self._settle_until = 0.0
        self._next_purge = 0.0  # monotonic time of the next purge pass (while leading)
        self._service: ServiceHandle | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        metrics.add_gauges(self._nodes_gauge)
        metrics.add_gauges(self._replicas_gauge)
        metrics.add_gauges(self._problems_gauge)

    def _nodes_gauge(self) -> GaugeReading:
        by_status = Counter(r.status for r in self.registry.nodes.values())
        samples = [([status], float(by_status.get(status, 0))) for status in NODE_STATUSES]
        return "torua_nodes", "Known nodes by status", ["status"], samples

    def _replicas_gauge(self) -> GaugeReading:
        if self._map is None:
            return "torua_shard_replicas", "Shard replicas by state", ["state"], []
        c = replica_counts(self._map.shards, self._map.replication_factor)
        samples = [(["active"], c.active), (["initializing"], c.initializing), (["unassigned"], c.unassigned)]
        return "torua_shard_replicas", "Shard replicas by state (leader's view)", ["state"], samples

    def _problems_gauge(self) -> GaugeReading:
        """Problems the cluster has, by kind (log_diverged, digest_mismatch, ...: health.py)."""
        counts = cluster_health(self._map, self.registry).counts() if self._map is not None else {}
        samples = [([kind], float(counts.get(kind, 0))) for kind in PROBLEM_KINDS]
        return "torua_cluster_problems", "Cluster problems by kind (leader's view)", ["kind"], samples

    @property
    def shardmap(self) -> ShardMap:
        """The map as last read or published (run() loads it before anything else reads it)."""
        if self._map is None:
            raise RuntimeError("the shard map is not loaded yet")
        return self._map

    async def run(self) -> None:
        s = self.settings
        self.nc = await connect(
            s.nats_url, name=s.coordinator_id, timeout=s.connect_timeout, service=True, auth=s.nats_auth
        )
        self.kv = await ensure_bucket(self.nc, s.nats_replicas, s.kv_max_bytes)
        await ensure_wal_stream(self.nc, s.nats_replicas, s.wal_max_bytes)
        await ensure_snapshot_bucket(self.nc, s.nats_replicas, s.snapshot_max_bytes)
        await ensure_versions_bucket(self.nc, s.nats_replicas)
        self.lease = Lease(self.kv, s.coordinator_id, s.lease_ttl)
        self.retention = Retention(self.nc, self.kv, self.registry, lambda: self.shardmap, s.purge_margin)
        await self._load_or_create_map()
        await self.nc.subscribe(subjects.ANNOUNCE, cb=self._on_announce)
        await self.nc.subscribe(subjects.HEARTBEAT_ALL, cb=self._on_heartbeat)
        log.info("coordinator %s started (%d shards, R=%d)", s.coordinator_id, s.num_shards, s.replication_factor)
        try:
            await self._loop()
        finally:
            await self._step_down()
            await self.lease.release()
            await self.nc.drain()

    def stop(self) -> None:
        self._stop.set()

    def nudge(self) -> None:
        """Recompute the map now rather than at the next tick (the registry changed)."""
        self._changed.set()

    @property
    def takeover_grace(self) -> float:
        """How long a new leader hears heartbeats before it changes the map: two heartbeat intervals
        and a margin, so every live node has reported its replicas."""
        return 2 * self.settings.heartbeat_interval + 0.5

    def planned_map(self) -> ShardMap:
        """The map placement computes from the registry now: what the next tick publishes."""
        return self._compute()

    # --- membership input (every coordinator follows it, so a standby takes over warm) ---------

    async def _on_announce(self, msg: Msg) -> None:
        try:
            ann = msgspec.json.decode(msg.data, type=Announce)
        except msgspec.DecodeError:
            log.warning("ignoring malformed announce")
            return
        log.info("node %s announced %s (incarnation %d)", ann.node_id, ann.event, ann.incarnation)
        if self.registry.announce(ann, time.monotonic(), time.time()):
            self._changed.set()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = msgspec.json.decode(msg.data, type=Heartbeat)
        except msgspec.DecodeError:
            log.warning("ignoring malformed heartbeat on %s", msg.subject)
            return
        if self.registry.heartbeat(hb, time.monotonic(), time.time()):
            self._changed.set()

    # --- leadership and the map ---------------------------------------------------------------

    async def _loop(self) -> None:
        tick = min(self.settings.heartbeat_interval / 2, self.settings.lease_ttl / 3)
        while not self._stop.is_set():
            try:
                await self._tick()
            except Exception:
                log.exception("coordinator tick failed")
            try:
                await asyncio.wait_for(self._wait_any(), tick)
            except TimeoutError:
                pass

    async def _wait_any(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({stop, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            changed.cancel()

    async def _tick(self) -> None:
        self._changed.clear()
        was_leader, term = self.lease.held, self.lease.epoch
        if not await self.lease.refresh():
            if was_leader:
                log.warning("lost leadership (epoch %d)", term)
                await self._step_down()
            return
        if not was_leader or self._service is None or self.lease.epoch != term:
            if not await self._take_over():
                return
        self.registry.sweep(time.monotonic())
        await self._publish_if_changed()
        await self._purge_if_due()

    async def _purge_if_due(self) -> None:
        """Purge the log below what is still needed (retention.py), every TORUA_PURGE_INTERVAL."""
        now = time.monotonic()
        if not self.settings.purge_interval or now < self._next_purge or now < self._settle_until:
            return
        self._next_purge = now + self.settings.purge_interval
        try:
            await self.retention.purge()
        except Exception:  # retried at the next interval; the log is only kept longer
            log.warning("log purge pass failed", exc_info=True)

    async def _take_over(self) -> bool:
        """Start a term: adopt the map in KV, stamp it with our epoch (so a map write by an earlier
        leader now fails its compare-and-set), and hold back changes for one heartbeat window while
        the registry fills from heartbeats (an adopted node has reported no replica yet: changing
        the map now could drop the only serving copy of a shard)."""
        await self._step_down()
        await self._load_or_create_map()
        if self.shardmap.epoch >= self.lease.epoch and not await self.lease.advance(self.shardmap.epoch + 1):
            return False
        log.info("%s is now the leader (epoch %d)", self.settings.coordinator_id, self.lease.epoch)
        now = time.monotonic()
        self.registry.adopt([n for e in self.shardmap.shards for n in e.hosts()], now)
        self._settle_until = now + self.takeover_grace
        if not await self._publish(self.shardmap):
            return False
        self._service = await start_cluster_service(self)
        return True

    async def _step_down(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None

    def _compute(self) -> ShardMap:
        s, m = self.settings, self.shardmap
        current = {e.id: e.replicas for e in m.shards}
        target = place(current, self.registry.placement_nodes(), m.num_shards, s.replication_factor)
        entries = next_entries(
            m.shards,
            target,
            self.registry.serving,
            {r.id for r in self.registry.reachable()},
            s.replication_factor,
        )
        return msgspec.structs.replace(m, shards=entries, replication_factor=s.replication_factor)

    async def _publish_if_changed(self) -> None:
        new = self._compute()
        if same_layout(new, self.shardmap):
            return
        if time.monotonic() < self._settle_until:
            return  # still hearing from every node after taking over; a later tick publishes it
        await self._publish(new)

    async def _publish(self, smap: ShardMap) -> bool:
        """Write the map under our epoch, compare-and-set on the map key's last revision. Only while
        the lease is valid by our monotonic clock; losing the compare-and-set (another leader wrote
        the map) steps down at once."""
        if not self.lease.valid():
            log.warning("not publishing the shard map: the lease (epoch %d) is not valid now", self.lease.epoch)
            return False
        new = msgspec.structs.replace(
            smap, epoch=self.lease.epoch, revision=self.shardmap.revision + 1, updated_at=time.time()
        )
        try:
            self._kv_revision = await self.kv.update(
                subjects.KV_SHARDMAP, msgspec.json.encode(new), last=self._kv_revision
            )
        except (KeyWrongLastSequenceError, APIError) as exc:
            log.warning("shard map changed under us (epoch %d): stepping down (%s)", self.lease.epoch, exc)
            self.lease.drop()
            await self._step_down()
            await self._load_or_create_map()
            return False
        self._map = new
        log.info("published shard map revision %d (epoch %d)", new.revision, new.epoch)
        return True

    async def _load_or_create_map(self) -> None:
        s = self.settings
        try:
            entry = await self.kv.get(subjects.KV_SHARDMAP)
            smap = msgspec.json.decode(entry.value or b"", type=ShardMap)
            self._kv_revision = entry.revision or 0
        except KeyNotFoundError:
            smap = ShardMap(
                revision=1,
                num_shards=s.num_shards,
                replication_factor=s.replication_factor,
                shards=[ShardEntry(id=i, replicas=[]) for i in range(s.num_shards)],
                cluster_id=uuid.uuid4().hex[:12],
                embedding_dim=s.embedding_dim,
                updated_at=time.time(),
            )
            try:
                self._kv_revision = await self.kv.create(subjects.KV_SHARDMAP, msgspec.json.encode(smap))
            except (KeyWrongLastSequenceError, APIError):
                return await self._load_or_create_map()  # another coordinator created it first
        if smap.num_shards != s.num_shards:
            raise ConfigError(
                f"TORUA_NUM_SHARDS is {s.num_shards} but this cluster was created with {smap.num_shards} shards"
            )
        if smap.embedding_dim != s.embedding_dim:
            raise ConfigError(
                f"TORUA_EMBEDDING_DIM is {s.embedding_dim} but this cluster was created with {smap.embedding_dim}"
            )
        self._map = smap
