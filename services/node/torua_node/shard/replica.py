"""One shard replica's life: open, replay the log until caught up, serve, keep applying.

The replica's position in the log (`applied_seq`) lives in Kuzu, written in the same transaction
as each change, so a crash at any point resumes exactly where the database is. Beside it the
replica keeps which log that is (the stream's identity, `logcheck.py`), checked whenever it starts
consuming and every LOG_CHECK_S: a log that is not the one it applied stops it (state
`diverged`) until the log is right again or the replica is rebuilt.

Apply stops and retries on anything but a verdict on an entry (`apply.is_entry_fault`): memory,
I/O and storage errors never skip an entry.

Log retention (snapshot.py, torua.retention): every `SnapshotPolicy.every` applied entries the
replica snapshots its shard into the object store; a replica with no database restores the latest
snapshot of its shard and replays only the tail. The log below the oldest snapshot kept may be
purged: a replica that finds entries it still needs purged (its position below the purge floor in
KV) restores a snapshot instead (`BehindLog`), never skips them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from torua.endpoints import ServiceHandle
from torua.errors import Unavailable
from torua.retention import read_floor
from torua.subjects import WAL_STREAM, shard_applied, wal_subject
from torua.tasks import end_task
from torua.wire import DigestCheck, ReplicaStatus, SnapshotTaken
from torua_node.settings import QueryLimits, SnapshotPolicy
from torua_node.shard.api import start_shard_service
from torua_node.shard.apply import apply_batch
from torua_node.shard.logcheck import LogView, behind_purge, log_id_of, log_problem
from torua_node.shard.readindex import ShardEnd
from torua_node.shard.snapshot import (
    EntriesSince,
    SnapshotCorrupt,
    Snapshots,
    checkpoint_and_copy,
    meta_for,
    restore_candidates,
)
from torua_node.shard.wal import fingerprint
from torua_node.shard.worker import ShardQueries, copy_database
from torua_node.storage.chunkview import ChunkView, load_chunk_view
from torua_node.storage.digest import content_digest
from torua_node.storage.graphview import GraphView, load_graph_view
from torua_node.storage.schema import (
    LogPosition,
    init_schema,
    read_applied_seq,
    read_log_position,
    write_log_id,
)
from torua_node.storage.store import Conn, ShardStore
from torua_node.storage.textindex import TextIndex, load_text_indexes
from torua_node.storage.vectors import VectorIndex, load_indexes

__all__ = ["ShardReplica", "LogDiverged", "BehindLog", "RestoreNeeded", "SnapshotMissing"]

log = logging.getLogger(__name__)

FETCH_BATCH = 512
# Bytes one fetch should bring at most. nats-py's fetch takes no max_bytes, so the next fetch's
# count is bounded by the last batch's entry sizes instead (a catching-up replica would otherwise
# pull FETCH_BATCH bulk entries, up to the max payload each, at once).
FETCH_MAX_BYTES = 64 * 1024 * 1024
# How long a read carrying a write token waits for this replica to apply that far.
READ_WAIT_S = 2.0
# Pause before the log consumer restarts after a failure, doubling while it fails at the same place.
RETRY_S = 0.5
MAX_RETRY_S = 5.0
_STOPPED_EARLY = "apply stopped early, database reopened"
_RETRYING = "apply failed, retrying"
# How often a replica checks that the log is still the one it applied (and, once it is not, whether
# it is again: a stream restored from a backup keeps its identity).
LOG_CHECK_S = 2.0
# How long stop() waits on each step before giving up with a warning: a stuck step must not hold
# the node's reconcile lock, and with it every later shard map, forever.
STOP_TIMEOUT_S = 5.0


class ShardReplica:
    def __init__(self, shard: int, store: ShardStore, nc: NATS, node_id: str, dim: int,
                 limits: QueryLimits | None = None, snapshots: SnapshotPolicy | None = None) -> None:
        self.shard = shard
        self.store = store
        self.nc = nc
        self.node_id = node_id
        self.dim = dim
        self.state = "opening"
        self.applied_seq = 0
        self.error: str | None = None
        self.failures = 0
        self.lag = 0  # log entries of this shard not yet applied, as of the last fetch
        self.entity_index = VectorIndex(dim)
        self.chunk_index = VectorIndex(dim)
        self.entity_text = TextIndex()
        self.chunk_text = TextIndex()
        # Entities and edges in memory: get (without embedding), entities and edges read it, not Kuzu.
        self.graph = GraphView()
        # Chunk rows and mentions in memory: retrieval's chunk and mention reads read it, not Kuzu.
        self.chunk_view = ChunkView()
        self._applied = asyncio.Condition()
        # Strong reads: the current end of the shard's log, from the node's one look at the stream.
        self.log_end = ShardEnd(nc, shard, lambda: (self.log_id, self.applied_seq))
        self._task: asyncio.Task[None] | None = None
        self._service: ServiceHandle | None = None
        self._closing = False
        self._reopen_needed = False
        self._batch_limit = FETCH_BATCH
        self.reopens = 0  # of the database, after transient apply failures
        # Which log this replica follows (stream creation time, µs) and the fingerprint of the entry
        # at applied_seq: both from the database (logcheck.py).
        self.log_id: int | None = None
        self.applied_fp: int | None = None
        self._log_lock = asyncio.Lock()
        self._next_log_check = 0.0
        # Digests compared with the peers (node/audit.py): apply holds still at `_hold` meanwhile.
        self.digest_check: DigestCheck | None = None
        self._hold: int | None = None
        self._unheld = asyncio.Event()
        self._unheld.set()
        self._digest_lock = asyncio.Lock()
        self._last_digest: tuple[int, str] | None = None
        # graph.query runs in a worker process on a copy of the database, never on the apply thread.
        self.queries = ShardQueries(shard, store.path, self._snapshot, limits or QueryLimits())
        # Snapshots (snapshot.py): when to take them, entries applied since the newest known one.
        self.snapshot_policy = snapshots or SnapshotPolicy()
        self._snapshots = Snapshots(nc)
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_task: asyncio.Task[None] | None = None
        self._since_snapshot = EntriesSince()
        self.restored_from: int | None = None  # the snapshot position this database was restored from
        # Called (with the shard) when the log was purged past this replica's position: its owner
        # discards the database and opens the replica again, which restores a snapshot.
        self.on_behind: Callable[[int], None] | None = None

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            shard=self.shard, state=self.state, applied_seq=self.applied_seq, error=self.error,  # type: ignore[arg-type]
            digest=self.digest_check,
        )

    async def start(self) -> None:
        # The query worker (and the node's warm spare) start with the first graph.query, not here: a
        # node that is never asked Cypher runs no extra processes.
        if not self.store.path.exists():
            await self._restore_snapshot()
        await self.store.open(lambda conn: init_schema(conn, self.dim))
        self.applied_seq, self.log_id, self.applied_fp = await self.store.call(read_log_position)
        self._since_snapshot = EntriesSince(self.restored_from or 0)
        if self.applied_seq and await self._purged_past_start():
            raise RestoreNeeded(f"shard {self.shard}: the log was purged past this replica's position {self.applied_seq}")
        self.entity_index, self.chunk_index = await self.store.call(load_indexes, self.dim)
        self.entity_text, self.chunk_text = await self.store.call(load_text_indexes)
        self.graph = await self.store.call(load_graph_view)
        self.chunk_view = await self.store.call(load_chunk_view)
        self.state = "recovering"
        self._task = asyncio.create_task(self._follow_log(), name=f"wal-{self.shard}")

    async def stop(self) -> None:
        # Stop serving first, while the log is still applied: reads already taken finish (and no
        # new one waits on a replica that stopped applying). "closing" also keeps it from activating.
        self.state = "closing"
        if self._service is not None:
            await self._stop_service(self._service)
        # The log loop also checks the flag: its cancel alone can be lost (see end_task).
        self._closing = True
        if self._task is not None:
            await end_task(self._task, STOP_TIMEOUT_S)
        if self._service is not None:  # after the task, which may have started it while ending
            await self._stop_service(self._service)
        if self._snapshot_task is not None:
            await end_task(self._snapshot_task, STOP_TIMEOUT_S)
        await self.queries.close()
        await self.log_end.close()
        await self.store.close()

    async def _stop_service(self, service: ServiceHandle) -> None:
        stopping = asyncio.ensure_future(service.stop())
        if not (await asyncio.wait({stopping}, timeout=STOP_TIMEOUT_S))[0]:
            stopping.cancel()
            log.warning(
                "shard %d: shard service did not stop in %.0fs", self.shard, STOP_TIMEOUT_S,
                extra={"shard": self.shard},
            )

    # --- reads wait for writes they depend on -------------------------------------------------

    async def wait_strong(self, after: int) -> None:
        """Wait until this replica reflects every write acknowledged before the call (and `after`):
        learn the end of the shard's log now (`log_end`: the node's one look at the stream for all
        its shards, readindex.StreamEnds, told this replica's position), then wait to apply that
        far. An end below what this replica applied, or another log than it follows, checks the
        log first (and stops the replica if it is not the log it applied)."""
        self._check_serving()
        applied = self.applied_seq  # before the request: the log's end then is at least this
        try:
            state = await self.log_end.get()
            end = state.end
            if end < applied or (self.log_id is not None and state.log_id != self.log_id):
                # The log holds less of this shard than this replica applied, or is another log:
                # re-created, or lost entries. Answering now could miss writes acknowledged in it.
                problem = await self._verify_log()
                if problem is not None:
                    await self._diverge(problem)
        except Exception as exc:  # noqa: BLE001 - NATS unreachable or the stream missing: retryable
            raise Unavailable(
                f"shard {self.shard} replica on {self.node_id} could not learn the end of its log "
                f"({type(exc).__name__}); retry, or read with consistency eventual"
            ) from None
        await self.wait_applied(max(after, end))

    async def wait_applied(self, seq: int, timeout: float = READ_WAIT_S) -> None:
        self._check_serving()
        if self.applied_seq >= seq:
            return
        try:
            async with self._applied:
                await asyncio.wait_for(
                    self._applied.wait_for(lambda: self.applied_seq >= seq or self.state == "diverged"), timeout
                )
        except TimeoutError:
            raise Unavailable(
                f"shard {self.shard} replica on {self.node_id} has applied up to {self.applied_seq}, "
                f"not yet {seq}; retry"
            ) from None
        self._check_serving()

    def _check_serving(self) -> None:
        if self.state == "diverged":
            raise Unavailable(f"shard {self.shard} replica on {self.node_id} stopped serving: {self.error}")

    async def _snapshot(self, dest: Path) -> int:
        """Copy the database for the query worker, on the replica's thread between two applies."""
        return await self.store.call(_copy_database_at, self.store.path, dest)

    # --- digests compared at one log position (node/audit.py) ---------------------------------

    async def digest_at(self, seq: int | None, timeout: float) -> tuple[int, str]:
        """(applied_seq, content digest) with apply held still at log position `seq` (a sequence of
        this shard's subject) until the digest is taken, so replicas are compared at the same
        point; a replica already past `seq` (or `seq` None) answers where it is. Unavailable if it
        does not reach `seq` within `timeout`."""
        async with self._digest_lock:
            if seq is None or self.applied_seq >= seq:
                return await self._digest()
            self._hold = seq
            self._unheld.clear()
            try:
                await self.wait_applied(seq, timeout)
                return await self._digest()
            finally:
                self._hold = None
                self._unheld.set()

    async def _digest(self) -> tuple[int, str]:
        cached = self._last_digest
        if cached is not None and cached[0] == self.applied_seq:
            return cached  # the content changes only with applied_seq
        self._last_digest = await self.store.call(_seq_and_digest)
        return self._last_digest

    def record_digest(self, seq: int, digest: str, peers: dict[str, str]) -> DigestCheck:
        """Keep the result of comparing this replica's digest at `seq` with its peers'."""
        check = DigestCheck(seq=seq, digest=digest, peers=dict(sorted(peers.items())),
                            match=all(d == digest for d in peers.values()), checked_at=time.time())
        if not check.match:
            differ = ", ".join(n for n, d in check.peers.items() if d != digest)
            log.error("shard %d: content differs from %s at log position %d", self.shard, differ, seq,
                      extra={"shard": self.shard})
        elif self.digest_check is not None and not self.digest_check.match:
            log.warning("shard %d: content equal to the peers' again at %d", self.shard, seq, extra={"shard": self.shard})
        self.digest_check = check
        return check

    # --- the log ------------------------------------------------------------------------------

    async def check_log_id(self, log_id: int) -> None:
        """A read pinned by a router to a position in the log `log_id`: refuse it (and stop serving,
        if the log really is another) when this replica applied a different log."""
        self._check_serving()
        if self.log_id is None or log_id == self.log_id:
            return
        try:
            problem = await self._verify_log()
        except Exception as exc:  # noqa: BLE001 - NATS unreachable or the stream missing: retryable
            raise Unavailable(
                f"shard {self.shard} replica on {self.node_id} could not check its log ({type(exc).__name__}); retry"
            ) from None
        if problem is not None:
            await self._diverge(problem)
        if self.log_id != log_id:
            # The router read another log than this replica follows (one of the two is stale): ask again.
            raise Unavailable(f"shard {self.shard} replica on {self.node_id} follows another log than the read "
                              "was pinned to; retry")

    async def _log_end(self) -> int:
        try:
            msg = await self.nc.jetstream().get_last_msg(WAL_STREAM, wal_subject(self.shard))
            return msg.seq or 0
        except NotFoundError:
            return 0

    async def _follow_log(self) -> None:
        failures, failed_at = 0, -1
        while not self._closing:
            try:
                if self.state == "diverged":
                    await self._while_diverged()
                    continue
                if self._reopen_needed:
                    await self.store.reopen()
                    self._reopen_needed = False
                await self._consume()
            except asyncio.CancelledError:
                raise
            except LogDiverged as exc:
                await self._diverge(str(exc))
            except BehindLog as exc:
                if await self._behind(str(exc)):
                    return
            except Exception as exc:  # noqa: BLE001 - consumer lost (NATS restart, gap): resume from Kuzu's position
                self._reopen_needed = self._reopen_needed or not self.store.is_open
                failures = failures + 1 if self.applied_seq == failed_at else 1
                failed_at = self.applied_seq
                log.warning("shard %d: log consumer restarting after %s", self.shard, type(exc).__name__, extra={"shard": self.shard})
                # Backs off when the same failure repeats (e.g. a batch larger than the buffer pool).
                await asyncio.sleep(min(RETRY_S * 2 ** (failures - 1), MAX_RETRY_S))

    async def _consume(self) -> None:
        js = self.nc.jetstream()
        catch_up_to = await self._log_end()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied_seq + 1,
            ack_policy=AckPolicy.NONE,
            # A consumer left behind by a crash is removed by the server after this long.
            inactive_threshold=15.0,
            max_ack_pending=-1,
        )
        sub = await js.pull_subscribe(wal_subject(self.shard), stream=WAL_STREAM, config=config)
        last_consumer_seq = 0
        try:
            while not self._closing:
                # After the consumer exists (so it reads the stream checked here), then periodically.
                if time.monotonic() >= self._next_log_check:
                    problem = await self._verify_log()
                    if problem is not None:
                        raise LogDiverged(problem)
                    self._next_log_check = time.monotonic() + LOG_CHECK_S
                if self.state == "diverged":  # found by a read meanwhile
                    raise LogDiverged(self.error or "log diverged")
                if self.state == "recovering" and self.applied_seq >= catch_up_to:
                    await self._activate()
                try:
                    msgs = await sub.fetch(self._batch_limit, timeout=1.0)
                except TimeoutError:  # nats-py raises its own subclass or asyncio's: nothing new yet
                    continue
                batch = []
                for m in msgs:
                    meta = m.metadata
                    if meta.sequence.consumer != last_consumer_seq + 1:
                        raise RuntimeError("gap in consumer sequence")
                    last_consumer_seq = meta.sequence.consumer
                    batch.append((meta.sequence.stream, m.data))
                if batch and batch[0][0] > self.applied_seq + 1 and await self._purged_past(self.applied_seq):
                    # Entries between applied_seq and this batch may be gone: restore, never skip them.
                    raise BehindLog(f"shard {self.shard}: the log was purged past this replica's position "
                                    f"{self.applied_seq}; restoring a snapshot")
                if batch:
                    await self._apply_held(batch)
                    self.lag = msgs[-1].metadata.num_pending
                    fitting = FETCH_MAX_BYTES * len(batch) // max(sum(len(d) for _, d in batch), 1)
                    self._batch_limit = max(1, min(FETCH_BATCH, self._batch_limit * 2, fitting))
        finally:
            self._next_log_check = 0.0  # a new consumer checks the log first
            await self._drop_consumer(sub, config.name)

    async def _drop_consumer(self, sub: Any, name: str | None) -> None:
        """Best effort: a restarted consumer's predecessor would otherwise linger on the server."""
        try:
            await sub.unsubscribe()
            if name:
                await asyncio.wait_for(self.nc.jetstream().delete_consumer(WAL_STREAM, name), 2.0)
        except Exception:  # noqa: BLE001 - connection gone or consumer already removed
            log.debug("shard %d: could not remove consumer %s", self.shard, name, extra={"shard": self.shard})

    async def _apply_held(self, batch: list[tuple[int, bytes]]) -> None:
        """Apply the batch, but no entry past a digest's hold until the hold is released."""
        while batch:
            hold = self._hold
            if hold is not None and batch[0][0] > hold:
                await self._unheld.wait()
                continue
            n = len(batch) if hold is None else bisect.bisect_right([seq for seq, _ in batch], hold)
            await self._apply(batch[:n])
            batch = batch[n:]

    async def _apply(self, batch: list[tuple[int, bytes]]) -> None:
        started = time.perf_counter()
        try:
            result = await self.store.call(apply_batch, batch, self.dim)
        except Exception as exc:
            # Not a verdict on an entry (those are recorded inside apply_batch): memory, disk, the
            # database's state. Nothing of the batch is skipped: retried from the log, reopened.
            self.error = f"{_RETRYING}: seq {batch[0][0]}: {type(exc).__name__}: {exc}"[:500]
            self._reopen_needed = True
            self._batch_limit = max(1, len(batch) // 2)
            log.warning("shard %d: %s", self.shard, self.error, extra={"shard": self.shard})
            raise
        result.update_indexes(self.entity_index, self.chunk_index)
        result.update_text_indexes(self.entity_text, self.chunk_text)
        result.update_graph(self.graph)  # before applied_seq moves: reads at it see the batch
        result.update_chunks(self.chunk_view)
        for seq, err in result.failures:
            self.failures += 1
            self.error = f"entry {seq} skipped: {err}"
            log.error("shard %d: %s", self.shard, self.error, extra={"shard": self.shard})
        if result.error is None and self.error is not None and self.error.startswith((_STOPPED_EARLY, _RETRYING)):
            self.error = None  # recovered
        raw = dict(batch).get(result.applied_seq) if result.applied_seq != self.applied_seq else None
        if raw is not None:
            self.applied_fp = fingerprint(raw)  # as apply_batch stored it with applied_seq
        async with self._applied:
            self.applied_seq = result.applied_seq
            self._applied.notify_all()
        await self.nc.publish(shard_applied(self.shard), str(self.applied_seq).encode())
        self._since_snapshot.applied(self.applied_seq, len(batch))
        self._maybe_snapshot()
        log.debug("shard %d applied %d entries in %.1f ms", self.shard, len(batch), (time.perf_counter() - started) * 1e3)
        if result.error is not None:
            # Transient (memory, disk): the rest of the batch was not applied; re-read it from the log
            # into a reopened database (storage.ShardStore.reopen says why).
            self.error = f"{_STOPPED_EARLY}: {result.error}"
            self._reopen_needed = True
            # A transaction larger than the buffer pool fails however often it is retried: halve it.
            self._batch_limit = max(1, len(batch) // 2)
            self.reopens += 1
            log.warning("shard %d: %s", self.shard, self.error, extra={"shard": self.shard})
            raise RuntimeError(f"apply stopped early: {result.error}")

    # --- snapshots and the purged log (snapshot.py, torua.retention) -------------------------

    async def _stream_log_id(self) -> int:
        info = await self.nc.jetstream().stream_info(WAL_STREAM)
        if info.created is None:
            raise RuntimeError(f"stream {WAL_STREAM} info has no creation time")
        return log_id_of(info.created)

    async def _restore_snapshot(self) -> None:
        """A replica without a database: download the newest usable snapshot of the shard into
        place (then only the log's tail is replayed). Without one, replay from the start, which is
        only possible while nothing of the shard's log was purged (SnapshotMissing otherwise)."""
        try:
            log_id = await self._stream_log_id()
            floor = await read_floor(self.nc, self.shard, log_id)
            metas = restore_candidates(await self._snapshots.list(self.shard), self.shard, log_id)
        except Exception as exc:  # noqa: BLE001 - NATS away or no stream yet: replay; the consumer checks the floor
            log.warning("shard %d: could not look for a snapshot (%s: %s); replaying the log", self.shard,
                        type(exc).__name__, exc, extra={"shard": self.shard})
            return
        path = self.store.path
        tmp = path.with_name(path.name + ".restore")
        tmp.unlink(missing_ok=True)  # a download a crash interrupted
        for meta in metas:
            if behind_purge(meta.seq, floor):
                break  # this and every older one lack entries the log no longer has
            started = time.perf_counter()
            try:
                await self._snapshots.download(meta, tmp)
            except Exception as exc:  # noqa: BLE001 - damaged, pruned meanwhile, or NATS trouble: the next one
                level = logging.ERROR if isinstance(exc, SnapshotCorrupt) else logging.WARNING
                log.log(level, "shard %d: snapshot %s unusable (%s: %s); trying an older one", self.shard, meta.name,
                        type(exc).__name__, exc, extra={"shard": self.shard})
                continue
            for stale in (path.with_name(path.name + ".wal"), path.with_name(path.name + ".shadow")):
                stale.unlink(missing_ok=True)
            os.replace(tmp, path)
            self.restored_from = meta.seq
            log.info("shard %d restored from snapshot at log position %d (%d bytes) in %.2fs", self.shard, meta.seq,
                     meta.size, time.perf_counter() - started, extra={"shard": self.shard})
            return
        if floor > 1:
            raise SnapshotMissing(f"shard {self.shard}: the log is purged below {floor} and no usable snapshot "
                                  "holds what was purged (see docs/operations.md, \"Log retention\")")

    async def _purged_past_start(self) -> bool:
        """At start, with a database on disk: was the log purged past it? Unknown (NATS away) is no:
        the consumer checks again before applying anything that skips sequences."""
        try:
            log_id = await self._stream_log_id()
            if self.log_id is not None and self.log_id != log_id:
                return False  # another log altogether: logcheck's business (diverged), not a purge
            return behind_purge(self.applied_seq, await read_floor(self.nc, self.shard, log_id))
        except Exception as exc:  # noqa: BLE001
            log.warning("shard %d: could not read the purge floor (%s)", self.shard, type(exc).__name__,
                        extra={"shard": self.shard})
            return False

    async def _purged_past(self, applied_seq: int) -> bool:
        if self.log_id is None:
            return False  # nothing applied and no log adopted yet: checked after _verify_log adopts one
        return behind_purge(applied_seq, await read_floor(self.nc, self.shard, self.log_id))

    async def _behind(self, why: str) -> bool:
        """Stop serving and hand the replica to its owner to restore; returns whether it was handed."""
        log.warning("%s", why, extra={"shard": self.shard})
        service, self._service = self._service, None
        if service is not None:
            await self._stop_service(service)
        if self.on_behind is None:
            await self._diverge(why)  # no owner to restore it (a bare replica): stop, loudly
            return False
        self.state, self.error = "recovering", why
        self.on_behind(self.shard)
        return True

    def _maybe_snapshot(self) -> None:
        every = self.snapshot_policy.every
        if not every or self._since_snapshot.count < every or self.state not in ("active", "recovering"):
            return
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.create_task(self._auto_snapshot(), name=f"snapshot-{self.shard}")

    async def _auto_snapshot(self) -> None:
        every = self.snapshot_policy.every
        try:
            # Entries applied while a snapshot was taken count towards the next one, which may be due
            # at once.
            while self._since_snapshot.count >= every and self.state in ("active", "recovering"):
                # Another replica of the shard may have taken one meanwhile: then count from it.
                self._since_snapshot.snapshot_at(max((m.seq for m in await self._snapshots.list(self.shard)), default=0))
                if self._since_snapshot.count >= every:
                    await self.snapshot()
        except Exception as exc:  # noqa: BLE001 - retried later; the log is kept until a snapshot exists
            self._since_snapshot.postpone(every // 2)  # not again at the very next batch
            log.warning("shard %d: snapshot failed (%s: %s)", self.shard, type(exc).__name__, exc,
                        extra={"shard": self.shard})

    async def snapshot(self) -> SnapshotTaken:
        """Snapshot the shard at this replica's position into the object store (unless one at or
        past it exists), prune old ones, and say which."""
        async with self._snapshot_lock:
            if self.state not in ("active", "recovering") or not self.store.is_open:
                raise Unavailable(f"shard {self.shard} replica on {self.node_id} is {self.state}; retry")
            if self.applied_seq == 0 or self.log_id is None:
                raise Unavailable(f"shard {self.shard} replica on {self.node_id} has applied nothing yet")
            existing = [m for m in await self._snapshots.list(self.shard)
                        if m.log_id == self.log_id and m.seq >= self.applied_seq]
            if existing:
                meta = max(existing, key=lambda m: m.seq)
                self._since_snapshot.snapshot_at(meta.seq)
                return SnapshotTaken(shard=self.shard, seq=meta.seq, bytes=meta.size, node=self.node_id)
            dest = self.store.path.parent / "snapshot"
            shutil.rmtree(dest, ignore_errors=True)
            try:
                started = time.perf_counter()
                pos = await self.store.call(checkpoint_and_copy, self.store.path, dest)
                copied = time.perf_counter()
                wal = dest / (self.store.path.name + ".wal")
                if wal.exists() and wal.stat().st_size:
                    raise RuntimeError(f"shard {self.shard}: the WAL is not empty after CHECKPOINT")
                file = dest / self.store.path.name
                meta = await asyncio.to_thread(meta_for, self.shard, pos, file)
                await self._snapshots.upload(file, meta)
                self._since_snapshot.snapshot_at(meta.seq)
                await self._snapshots.prune(self.shard, self.snapshot_policy.keep)
                log.info("shard %d snapshot at %d: %d bytes, copied in %.0f ms, stored in %.0f ms", self.shard,
                         meta.seq, meta.size, (copied - started) * 1e3, (time.perf_counter() - copied) * 1e3,
                         extra={"shard": self.shard})
                return SnapshotTaken(shard=self.shard, seq=meta.seq, bytes=meta.size, node=self.node_id)
            finally:
                shutil.rmtree(dest, ignore_errors=True)

    # --- the log's identity (logcheck.py) ----------------------------------------------------

    async def _verify_log(self) -> str | None:
        """Why the log is not the one this replica applied, or None; a replica that applied
        nothing yet (or a database from before identities were kept) records the log's identity.
        Raises what JetStream raised (unreachable, stream missing): unknown, not diverged."""
        js = self.nc.jetstream()
        info = await js.stream_info(WAL_STREAM)
        if info.created is None:
            raise RuntimeError(f"stream {WAL_STREAM} info has no creation time")
        view = LogView(log_id_of(info.created), info.state.first_seq, info.state.last_seq)
        async with self._log_lock:
            pos = LogPosition(self.applied_seq, self.log_id, self.applied_fp)
            entry = None
            if pos.applied_seq and pos.applied_fp is not None and view.first_seq <= pos.applied_seq <= view.last_seq:
                try:
                    msg = await js.get_msg(WAL_STREAM, pos.applied_seq)
                    entry = (msg.subject or "", msg.data or b"")
                except NotFoundError:
                    entry = None  # deleted from the stream: nothing to compare
            problem = log_problem(self.shard, pos, view, entry)
            if problem is None and self.log_id != view.log_id:
                await self.store.call(write_log_id, view.log_id)
                if self.log_id is not None:
                    log.info("shard %d: follows the re-created stream %s (nothing applied yet)", self.shard,
                             WAL_STREAM, extra={"shard": self.shard})
                self.log_id = view.log_id
            return problem

    async def _diverge(self, problem: str) -> None:
        """Stop serving and applying: the log is not the one this replica applied."""
        if self.state in ("diverged", "closing"):
            return
        self.state, self.error = "diverged", f"log diverged: {problem}"
        log.error("shard %d replica stopped serving and applying: %s", self.shard, self.error,
                  extra={"shard": self.shard})
        async with self._applied:
            self._applied.notify_all()  # reads waiting on this replica fail now (retryable)

    async def _while_diverged(self) -> None:
        """Stay out of the shard's queue group; resume if the log becomes the applied one again."""
        service, self._service = self._service, None
        if service is not None:
            await self._stop_service(service)
        while not self._closing and self.state == "diverged":
            await asyncio.sleep(LOG_CHECK_S)
            try:
                problem = await self._verify_log()
            except Exception as exc:  # noqa: BLE001 - stream missing or NATS away: still not the log applied
                log.debug("shard %d: log check failed: %s", self.shard, type(exc).__name__, extra={"shard": self.shard})
                continue
            if problem is None and self.state == "diverged":
                log.warning("shard %d: the log is the one this replica applied again; resuming", self.shard,
                            extra={"shard": self.shard})
                self.state, self.error = "recovering", None

    async def _activate(self) -> None:
        self._service = await start_shard_service(self)
        if self._closing:  # stop() began meanwhile and stops the service once this task ends
            return
        self.state = "active"
        log.info("shard %d replica caught up at %d and serving", self.shard, self.applied_seq, extra={"shard": self.shard})


class LogDiverged(Exception):
    """The log is not the one this replica applied (logcheck.log_problem says why)."""


class BehindLog(Exception):
    """The log was purged past this replica's position (logcheck.behind_purge): it restores a snapshot."""


class RestoreNeeded(Exception):
    """Raised by start(): the database on disk is behind the purged log; discard it and start again
    (the new replica restores a snapshot)."""


class SnapshotMissing(Exception):
    """The shard's log was purged and no usable snapshot holds what was purged."""


def _seq_and_digest(conn: Conn) -> tuple[int, str]:
    # One call on the shard thread: the position and the content are read at the same point.
    return read_applied_seq(conn), content_digest(conn)


def _copy_database_at(conn: Conn, src: Path, dest: Path) -> int:
    # On the shard thread: no transaction is writing, so the file and its WAL are consistent, and
    # the position read here is the copy's.
    seq = read_applied_seq(conn)
    copy_database(src, dest)
    return seq
