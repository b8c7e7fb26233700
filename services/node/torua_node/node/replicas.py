"""The shard replicas this node hosts: started and stopped to follow the shard map; and the router's
in-process path to them (`LocalReads`): point reads, fan-out rounds, other routers' rounds in one
message per node, and the node's direct search."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS

from torua import collector
from torua.endpoints import RawReply, decode_request, encode
from torua.errors import BadRequest, InternalError, ToruaError, Unavailable, error_for_code
from torua.metrics import GaugeReading
from torua.subjects import APPLIED_RESET, shard_applied
from torua.wire import ReplicaStatus, Reply
from torua_node.settings import QueryLimits, SnapshotPolicy
from torua_node.shard.api import MAX_REPLY_BYTES, ShardApi, search_hosted, served_named, served_op
from torua_node.shard.protocol import (
    HostedHits,
    HostedVector,
    NodeShards,
    NodeShardsReply,
    Op,
    ShardError,
    ShardRequest,
)
from torua_node.shard.replica import RestoreNeeded, ShardReplica
from torua_node.storage.store import ShardStore

__all__ = ["ReplicaManager", "LocalReads"]

Q = TypeVar("Q", bound=ShardRequest)
R = TypeVar("R", bound=Reply)

log = logging.getLogger(__name__)


class ReplicaManager:
    def __init__(self, root: Path, *, node_id: str, buffer_pool_mb: int, max_db_size_gb: int,
                 query_limits: QueryLimits | None = None, snapshots: SnapshotPolicy | None = None) -> None:
        self.root = root
        self._snapshots = snapshots
        self._restoring: set[asyncio.Task[list[int]]] = set()
        self._query_limits = query_limits
        self.node_id = node_id
        self._buffer_pool_mb = buffer_pool_mb
        self._max_db_size_gb = max_db_size_gb
        self.replicas: dict[int, ShardReplica] = {}
        # The applied_seq each replica's database had when opened: a restart resumes from there.
        self.opened_at: dict[int, int] = {}
        self._lock = asyncio.Lock()

    def _store(self, shard: int) -> ShardStore:
        return ShardStore(
            self.root / f"shard-{shard:04d}" / "graph.kuzu",
            buffer_pool_mb=self._buffer_pool_mb,
            max_db_size_gb=self._max_db_size_gb,
            shard=shard,
        )

    async def reconcile(self, wanted: set[int], nc: NATS, dim: int) -> bool:
        """Start replicas newly assigned, stop (and delete) those no longer assigned."""
        async with self._lock:
            added = sorted(wanted - self.replicas.keys())
            removed = sorted(self.replicas.keys() - wanted)
            if not added and not removed:
                return False
            await asyncio.gather(*(self._open(s, nc, dim) for s in added), *(self._drop(s) for s in removed))
            return True

    def _replica(self, shard: int, nc: NATS, dim: int) -> ShardReplica:
        replica = ShardReplica(shard, self._store(shard), nc, self.node_id, dim, self._query_limits, self._snapshots)
        replica.on_behind = lambda s: self._restore_later(s, nc, dim)
        return replica

    def _restore_later(self, shard: int, nc: NATS, dim: int) -> None:
        """The log was purged past a running replica: discard and reopen it (it restores a snapshot)."""
        task = asyncio.create_task(self.rebuild([shard], nc, dim), name=f"restore-{shard}")
        self._restoring.add(task)
        task.add_done_callback(self._restoring.discard)

    async def _start_empty(self, shard: int, nc: NATS, dim: int, old: ShardReplica, what: str) -> bool:
        """Remove a stopped replica's files and start its shard again from nothing (a snapshot, then
        the log); False if even that fails (the replica is left `failed`, saying why)."""
        old.store.remove_files()
        replica = self._replica(shard, nc, dim)
        self.replicas[shard] = replica
        try:
            await replica.start()
        except Exception as exc:
            log.exception("shard %d: %s failed on an empty database", shard, what)
            replica.state, replica.error = "failed", f"{what} failed: {type(exc).__name__}: {exc}"
            return False
        return True

    async def _open(self, shard: int, nc: NATS, dim: int) -> None:
        replica = self._replica(shard, nc, dim)
        self.replicas[shard] = replica
        self.opened_at[shard] = 0
        try:
            await replica.start()
        except RestoreNeeded as exc:
            # The log no longer holds what this database lacks: start again from a snapshot.
            log.warning("%s; discarding it and restoring a snapshot", exc)
            await replica.stop()
            if not await self._start_empty(shard, nc, dim, replica, "restore"):
                return
        except Exception:
            # Kuzu 0.11.3 can fail to recover its own WAL after a SIGKILL ("duplicated primary key").
            # Everything it held is in the write-ahead log, so start over and replay.
            log.exception("shard %d failed to open; rebuilding it from the write-ahead log", shard)
            await replica.store.close()
            if not await self._start_empty(shard, nc, dim, replica, "open"):
                return
        # start() read the position from the database and has not applied anything yet.
        self.opened_at[shard] = self.replicas[shard].applied_seq
        log.info("shard %d replica open at applied_seq %d", shard, replica.applied_seq)

    async def _drop(self, shard: int) -> None:
        replica = self.replicas[shard]
        await replica.stop()
        replica.store.remove_files()
        del self.replicas[shard]
        self.opened_at.pop(shard, None)
        collector.release()  # its in-memory indexes are garbage now
        log.info("shard %d replica closed and removed", shard)

    async def rebuild(self, shards: list[int], nc: NATS, dim: int) -> list[int]:
        """Discard these replicas' databases and start them again: from the newest snapshot of the
        shard in the current log and its tail, or the whole log if there is none. For a replica whose
        log diverged (the operator accepts what the log now holds), whose digest differs, or that is
        behind the purged log."""
        async with self._lock:
            todo = sorted(s for s in set(shards) if s in self.replicas)
            for shard in todo:
                replica = self.replicas[shard]
                await replica.stop()
                replica.store.remove_files()
                log.warning("shard %d replica discarded (was at applied_seq %d); rebuilding it from the log",
                            shard, replica.applied_seq)
            collector.release()
            await asyncio.gather(*(self._open(s, nc, dim) for s in todo))
            for shard in todo:  # routers' caches: positions from before may count in another log
                await nc.publish(shard_applied(shard), APPLIED_RESET)
            return todo

    def statuses(self) -> list[ReplicaStatus]:
        return [r.status() for _, r in sorted(self.replicas.items())]

    async def close_all(self) -> None:
        """Stop every replica, keeping the files (a restart resumes from them): each stops serving,
        finishes the batch it is applying (its store's one thread runs the close after it) and
        closes its database."""
        async with self._lock:
            await asyncio.gather(*(r.stop() for r in self.replicas.values()), return_exceptions=True)
            for shard, replica in sorted(self.replicas.items()):
                log.info("shard %d replica closed at applied_seq %d or later", shard, replica.applied_seq)
            self.replicas.clear()
            self.opened_at.clear()


class LocalReads:
    """This node's replicas as the router's in-process path to them (`router/client.py` `LocalCalls`,
    `router/api.py` `LocalShards`): a request to a shard whose replica here is serving ("active":
    caught up, in its shard's queue group) is answered by the handler the shard's endpoint runs
    (`shard/api.py` SHARD_OPS), in-process, with no encoding, message or decoding: so with the same
    readiness and consistency rules (`ShardApi._ready`). A replica that is not serving, or that
    answers 503 (not caught up in time, stopped meanwhile, its query queue full), leaves the request
    to the shard's queue group over NATS, where another replica may answer. Other nodes' routers
    send this node the requests of a fan-out round for the shards it serves in one message
    (`batch`, `torua.shard.node.<id>.batch`), answered the same way.

    As over NATS: an error is raised as the `ToruaError` of its code (`error_for_code`, what the
    NATS path decodes), an unexpected exception as a 500 (logged here, as the endpoint would); the
    reply is the handler's own, built for this request (handlers share nothing of the replica's
    state with it), which callers only read. The endpoint's bound on concurrent requests (256 per
    service, answered 503 beyond) is not applied: it keeps one NATS subscription from stalling, and
    an in-process caller is itself one of the node's bounded `torua-api` requests, asking each shard
    at most once per round. Queries are not called in-process (`Served.in_process`): their bounded
    queue admits every router's parts in arrival order, over NATS.

    `counts[(op, outcome)]`: requests answered here for this node's router ("local", 4xx included) or
    for another's, several shards in one message ("node", `batch`), and requests of a hosted shard
    left to NATS ("fallback"); reported as the `torua_local_point_reads` gauge (named when it counted
    `get` and `kv_get` alone)."""

    def __init__(self, replicas: ReplicaManager) -> None:
        self._replicas = replicas
        self._apis: dict[int, ShardApi] = {}
        self.counts: Counter[tuple[str, str]] = Counter()

    @property
    def node_id(self) -> str:
        return self._replicas.node_id

    def serving(self, shard: int) -> bool:
        """Whether this node's replica of `shard` serves now (`call` would answer it here)."""
        replica = self._replicas.replicas.get(shard)
        return replica is not None and replica.state == "active"

    async def call(self, shard: int, op: Op[Q, R], req: Q, *, outcome: str = "local") -> R | None:
        """`op` answered by this node's serving replica of `shard`; None: not served here, ask its
        queue group. A 503 (not caught up in time, stopped serving, queue full) is raised, as the
        shard's first answer: the caller asks again where another replica may answer, once, as it
        would after a 503 over NATS (waiting here and then twice more there made a lagging shard cost
        three waits). `outcome`: what `counts` calls an answer given here ("local": to this node's
        router)."""
        replica = self._replicas.replicas.get(shard)
        if replica is None:
            self._apis.pop(shard, None)
            return None
        served = served_op(op)
        if served is None or not served.in_process:
            return None
        if replica.state != "active":
            self.counts[op.name, "fallback"] += 1
            return None
        try:
            reply = await served.handler(self._api(shard, replica))(req)
        except Unavailable:  # not caught up in time, stopped serving, queue full: another may answer
            self.counts[op.name, "fallback"] += 1
            raise
        except ToruaError as exc:
            self.counts[op.name, outcome] += 1
            raise error_for_code(exc.code, exc.description, getattr(exc, "retry_after_ms", None)) from None
        except Exception as exc:
            # Stopped meanwhile (its database closes under the read; over NATS, stopping the service
            # would have waited for it): ask the queue group. Any other failure is a 500, as the
            # endpoint answers it.
            if replica.state != "active" or self._replicas.replicas.get(shard) is not replica:
                self.counts[op.name, "fallback"] += 1
                return None
            log.exception("shard %d: in-process %s failed", shard, op.name)
            raise InternalError(f"internal error ({type(exc).__name__}); see the server log") from None
        self.counts[op.name, outcome] += 1
        return reply

    async def batch(self, req: NodeShards) -> RawReply:
        """`torua.shard.node.<id>.batch` (`NodeShards`): each shard's request answered as `call`
        answers it (so as its endpoint would, errors and 503s included); a shard not served here is
        `left` for the router to ask its queue group, as are those whose replies would not fit in one
        message with the others (the queue group's endpoint sends a large reply in parts)."""
        served = served_named(req.op)
        if served is None:
            raise BadRequest(f"unknown shard operation {req.op!r}")
        op = served.op

        # One after the other, without a task each: a handler waits only for its replica to apply as
        # far as asked, and the others apply meanwhile, so waiting for one delays the next little.
        shards = list(req.shards)
        results: list[Reply | ToruaError | None] = []
        for shard in shards:
            try:
                results.append(await self.call(shard, op, decode_request(bytes(req.shards[shard]), op.request),
                                               outcome="node"))
            except ToruaError as exc:
                results.append(exc)
        answer = NodeShardsReply()
        room = MAX_REPLY_BYTES - 1024 * (len(shards) + 1)  # the envelope's own keys and errors
        for shard, result in zip(shards, results):
            if result is None:
                answer.left.append(shard)
            elif isinstance(result, ToruaError):
                answer.errors[shard] = ShardError(code=result.code, description=result.description,
                                                  retry_after_ms=getattr(result, "retry_after_ms", None))
            else:
                data = encode(result)
                if len(data) > room:
                    answer.left.append(shard)
                else:
                    room -= len(data)
                    answer.shards[shard] = msgspec.Raw(data)
        return RawReply(encode(answer))

    async def vector(self, req: HostedVector) -> RawReply:
        """`torua.shard.all.vector`: the asked shards whose replica here is serving, searched as their
        endpoints would (shard/api.py `search_hosted`); the others are left to their queue groups.
        Shards served here that were not asked are named (a client's shard count out of date)."""
        apis: dict[int, ShardApi] = {}
        for shard in req.shards:
            replica = self._replicas.replicas.get(shard)
            if replica is not None and replica.state == "active":
                apis[shard] = self._api(shard, replica)
        asked = set(req.shards)
        unasked = [s for s, r in self._replicas.replicas.items() if s not in asked and r.state == "active"]
        answer = await search_hosted(apis, req, unasked)
        data = encode(answer)
        if len(data) > MAX_REPLY_BYTES:
            # Too large for one message (a large k over many shards): every shard is left to its
            # queue group, whose endpoint sends its own answer in parts.
            data = encode(HostedHits(shards={}, unasked=answer.unasked))
        return RawReply(data)

    def gauge(self) -> GaugeReading:
        samples = [([op, outcome], float(n)) for (op, outcome), n in sorted(self.counts.items())]
        return ("torua_local_point_reads", "Shard requests (point reads, fan-out rounds) answered by this "
                "node's replicas in-process for its router (local) or for another's in one message per node "
                "(node), or left to NATS though it hosts the shard (fallback)", ["op", "outcome"], samples)

    def _api(self, shard: int, replica: ShardReplica) -> ShardApi:
        """The shard endpoints' handler over this replica (kept while it stays the shard's replica)."""
        api = self._apis.get(shard)
        if api is None or api.replica is not replica:  # a replica rebuilt or reopened: a new one
            api = self._apis[shard] = ShardApi(replica)
        return api
