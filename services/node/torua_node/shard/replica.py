"""One shard replica's life: open, replay the log until caught up, serve, keep applying.

The replica's position in the log (`applied_seq`) lives in Kuzu, written in the same transaction
as each change, so a crash at any point resumes exactly where the database is.
"""

from __future__ import annotations

import asyncio
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
from torua.wire import ReplicaStatus
from torua_node.shard.api import start_shard_service
from torua_node.shard.apply import apply_batch
from torua_node.shard.readindex import LogEnd
from torua_node.storage.schema import init_schema, read_applied_seq
from torua_node.storage.store import ShardStore
from torua_node.storage.textindex import TextIndex, load_text_indexes
from torua_node.storage.vectors import VectorIndex, load_indexes

__all__ = ["ShardReplica"]

log = logging.getLogger(__name__)

FETCH_BATCH = 512
# How long a read carrying a write token waits for this replica to apply that far.
READ_WAIT_S = 2.0
# Pause before the log consumer restarts after a failure, doubling while it fails at the same place.
RETRY_S = 0.5
MAX_RETRY_S = 5.0
_STOPPED_EARLY = "apply stopped early, database reopened"
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

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            shard=self.shard, state=self.state, applied_seq=self.applied_seq, error=self.error  # type: ignore[arg-type]
        )

    async def start(self) -> None:
        await self.store.open(lambda conn: init_schema(conn, self.dim))
        self.applied_seq = await self.store.call(read_applied_seq)
        self.entity_index, self.chunk_index = await self.store.call(load_indexes, self.dim)
        self.entity_text, self.chunk_text = await self.store.call(load_text_indexes)
        self.state = "recovering"
        self._task = asyncio.create_task(self._follow_log(), name=f"wal-{self.shard}")

    async def stop(self) -> None:
        # The log loop also checks the flag: its cancel alone can be lost (see end_task).
        self.state, self._closing = "closing", True
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
        try:
            end = await self.log_end.get()
        except Exception as exc:  # noqa: BLE001 - NATS unreachable or the stream missing: retryable
            raise Unavailable(
                f"shard {self.shard} replica on {self.node_id} could not learn the end of its log "
                f"({type(exc).__name__}); retry, or read with consistency eventual"
            ) from None
        await self.wait_applied(max(after, end))

    async def wait_applied(self, seq: int, timeout: float = READ_WAIT_S) -> None:
        if self.applied_seq >= seq:
            return
        try:
            async with self._applied:
                await asyncio.wait_for(self._applied.wait_for(lambda: self.applied_seq >= seq), timeout)
        except TimeoutError:
            raise Unavailable(
                f"shard {self.shard} replica on {self.node_id} has applied up to {self.applied_seq}, "
                f"not yet {seq}; retry"
            ) from None

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
                if self._reopen_needed:
                    await self.store.reopen()
                    self._reopen_needed = False
                await self._consume()
            except asyncio.CancelledError:
                raise
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
                    await self._apply(batch)
                    self.lag = msgs[-1].metadata.num_pending
                    self._batch_limit = min(FETCH_BATCH, self._batch_limit * 2)
        finally:
            await self._drop_consumer(sub, config.name)

    async def _drop_consumer(self, sub: Any, name: str | None) -> None:
        """Best effort: a restarted consumer's predecessor would otherwise linger on the server."""
        try:
            await sub.unsubscribe()
            if name:
                await asyncio.wait_for(self.nc.jetstream().delete_consumer(WAL_STREAM, name), 2.0)
        except Exception:  # noqa: BLE001 - connection gone or consumer already removed
            log.debug("shard %d: could not remove consumer %s", self.shard, name, extra={"shard": self.shard})

    async def _apply(self, batch: list[tuple[int, bytes]]) -> None:
        started = time.perf_counter()
        result = await self.store.call(apply_batch, batch, self.dim)
        result.update_indexes(self.entity_index, self.chunk_index)
        result.update_text_indexes(self.entity_text, self.chunk_text)
        for seq, err in result.failures:
            self.failures += 1
            self.error = f"entry {seq} skipped: {err}"
            log.error("shard %d: %s", self.shard, self.error, extra={"shard": self.shard})
        if result.error is None and self.error is not None and self.error.startswith(_STOPPED_EARLY):
            self.error = None  # recovered
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

    async def _activate(self) -> None:
        self._service = await start_shard_service(self)
        if self._closing:  # stop() began meanwhile and stops the service once this task ends
            return
        self.state = "active"
        log.info("shard %d replica caught up at %d and serving", self.shard, self.applied_seq, extra={"shard": self.shard})
