"""One shard replica's life: open, replay the log until caught up, serve, keep applying.

The replica's position in the log (`applied_seq`) lives in Kuzu, written in the same transaction
as each change, so a crash at any point resumes exactly where the database is. Beside it the
replica keeps which log that is (the stream's identity, `logcheck.py`), checked whenever it starts
consuming and every LOG_CHECK_S: a log that is not the one it applied stops it (state
`diverged`) until the log is right again or the replica is rebuilt.

Apply stops and retries on anything but a verdict on an entry (`apply.is_entry_fault`): memory,
I/O and storage errors never skip an entry.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from torua.endpoints import ServiceHandle
from torua.errors import Unavailable
from torua.subjects import WAL_STREAM, shard_applied, wal_subject
from torua.tasks import end_task
from torua.wire import DigestCheck, ReplicaStatus
from torua_node.shard.api import start_shard_service
from torua_node.shard.apply import apply_batch
from torua_node.shard.logcheck import LogView, log_id_of, log_problem
from torua_node.shard.readindex import LogEnd
from torua_node.shard.wal import fingerprint
from torua_node.storage.digest import content_digest
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

__all__ = ["ShardReplica", "LogDiverged"]

log = logging.getLogger(__name__)

FETCH_BATCH = 512
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
    def __init__(self, shard: int, store: ShardStore, nc: NATS, node_id: str, dim: int) -> None:
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
        self._applied = asyncio.Condition()
        self.log_end = LogEnd(self._log_end)  # strong reads: the current end of the shard's log
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

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            shard=self.shard, state=self.state, applied_seq=self.applied_seq, error=self.error,  # type: ignore[arg-type]
            digest=self.digest_check,
        )

    async def start(self) -> None:
        await self.store.open(lambda conn: init_schema(conn, self.dim))
        self.applied_seq, self.log_id, self.applied_fp = await self.store.call(read_log_position)
        self.entity_index, self.chunk_index = await self.store.call(load_indexes, self.dim)
        self.entity_text, self.chunk_text = await self.store.call(load_text_indexes)
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
        learn the end of the shard's log now, then wait to apply that far."""
        self._check_serving()
        applied = self.applied_seq  # before the request: the log's end then is at least this
        try:
            end = await self.log_end.get()
            if end < applied:
                # The log holds less of this shard than this replica applied: re-created, or lost
                # entries. Answering now could miss writes acknowledged in the new log.
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
                if batch:
                    await self._apply_held(batch)
                    self.lag = msgs[-1].metadata.num_pending
                    self._batch_limit = min(FETCH_BATCH, self._batch_limit * 2)
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


def _seq_and_digest(conn: Conn) -> tuple[int, str]:
    # One call on the shard thread: the position and the content are read at the same point.
    return read_applied_seq(conn), content_digest(conn)
