"""A replica and its log, on a real nats-server and real Kuzu (no cluster processes):

- memory and I/O errors coming from the storage stop apply, which retries and skips nothing,
  while an entry that is bad in itself is skipped the same way on every replica;
- a WAL stream deleted and created again, or one that lost entries a replica applied (and reused
  their sequence numbers), stops the replica: it serves nothing and applies nothing more;
- a replica that applied nothing follows whatever stream it finds.

The same with whole clusters under writes: tests/integration/test_log_divergence.py.
"""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from torua.errors import Unavailable
from torua.streams import ensure_wal_stream
from torua.subjects import WAL_STREAM, wal_subject
from torua_node.shard.apply import apply_batch
from torua_node.shard.logcheck import log_id_of
from torua_node.shard.replica import ShardReplica
from torua_node.shard.wal import WalEntity, WalEntry, encode_entry
from torua_node.storage.digest import content_digest, counts
from torua_node.storage.schema import write_log_id
from torua_node.storage.store import ShardStore

from tests.conftest import wait_for

DIM = 4


def entry(i: int, shard: int = 0) -> bytes:
    return encode_entry(WalEntry(request_id=f"r{shard}-{i}", ts=float(i), entities=[
        WalEntity(id=f"e{shard}-{i}", name=f"entity {i}", type="T", description="", properties="{}",
                  embedding=bytes(4 * DIM))]))


def store(path: Path) -> ShardStore:
    return ShardStore(path / "graph.kuzu", buffer_pool_mb=32, max_db_size_gb=1, shard=0)


class FlakyStore:
    """A real shard store whose first applies fail with `faults`: the seam through which a full disk,
    an I/O error or a memory shortage reaches the replica."""

    def __init__(self, real: ShardStore, faults: list[BaseException]) -> None:
        self.real, self.faults, self.raised = real, faults, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def call(self, fn: Any, *args: Any) -> Any:
        if fn is apply_batch and self.faults:
            self.raised += 1
            raise self.faults.pop(0)
        return await self.real.call(fn, *args)


async def publish(nc: NATS, raws: list[bytes], shard: int = 0) -> list[int]:
    js = nc.jetstream()
    return [(await js.publish(wal_subject(shard), raw, stream=WAL_STREAM)).seq for raw in raws]


async def recreate_stream(nc: NATS) -> int:
    """Delete TORUA_WAL and create it again as the coordinator would; returns its new identity."""
    js = nc.jetstream()
    await js.delete_stream(WAL_STREAM)
    await ensure_wal_stream(nc)
    info = await js.stream_info(WAL_STREAM)
    assert info.created is not None
    return log_id_of(info.created)


async def test_storage_errors_stop_apply_and_retry_while_a_bad_entry_is_skipped_on_every_replica(
    nc: NATS, tmp_path: Path
) -> None:
    await ensure_wal_stream(nc)
    seqs = await publish(nc, [entry(1), entry(2), b"\xc1 not an entry", entry(3), entry(4)])
    faults: list[BaseException] = [OSError(5, "Input/output error"), MemoryError(), OSError(28, "No space left on device")]
    flaky = FlakyStore(store(tmp_path / "a"), faults)
    a = ShardReplica(0, flaky, nc, "node-a", DIM)  # type: ignore[arg-type]
    b = ShardReplica(0, store(tmp_path / "b"), nc, "node-b", DIM)
    await a.start()
    await b.start()
    try:
        seen = await wait_for(lambda: _error_of(a, "apply failed, retrying"), timeout=10, what="the retry shown")
        assert "OSError" in seen or "MemoryError" in seen
        assert a.failures == 0  # nothing was skipped for a fault of the storage

        async def both_applied() -> bool:
            return a.applied_seq == b.applied_seq == seqs[-1] and a.state == b.state == "active"

        await wait_for(both_applied, timeout=20, what="both replicas applied everything")
        assert flaky.raised == 3
        ca, cb = await a.store.call(counts), await b.store.call(counts)
        assert ca == cb and ca["entities"] == 4 and ca["failures"] == 1  # only the undecodable entry
        assert a.error is not None and a.error.startswith(f"entry {seqs[2]} skipped")
        assert await a.store.call(content_digest) == await b.store.call(content_digest)
    finally:
        await a.stop()
        await b.stop()


async def _error_of(replica: ShardReplica, prefix: str) -> str | None:
    return replica.error if replica.error and replica.error.startswith(prefix) else None


async def test_a_re_created_stream_stops_the_replica_and_a_new_replica_follows_it(
    nc: NATS, tmp_path: Path
) -> None:
    await ensure_wal_stream(nc)
    old = await publish(nc, [entry(i) for i in range(1, 4)])
    replica = ShardReplica(0, store(tmp_path / "a"), nc, "node-a", DIM)
    await replica.start()
    try:
        await wait_for(lambda: _active_at(replica, old[-1]), timeout=10, what="replica caught up")
        await recreate_stream(nc)
        new = await publish(nc, [entry(i) for i in range(10, 15)])  # sequences 1..5 again
        assert new == [1, 2, 3, 4, 5]
        await wait_for(lambda: _state(replica, "diverged"), timeout=10, what="replica stopped")
        assert replica.error is not None and "created again" in replica.error
        with pytest.raises(Unavailable, match="stopped serving"):
            await replica.wait_strong(0)
        with pytest.raises(Unavailable, match="stopped serving"):
            await replica.wait_applied(0)  # eventual reads too
        assert replica.applied_seq == old[-1]
        assert (await replica.store.call(counts))["entities"] == 3  # nothing of the new log applied
    finally:
        await replica.stop()
    fresh = ShardReplica(0, store(tmp_path / "b"), nc, "node-b", DIM)
    await fresh.start()
    try:
        await wait_for(lambda: _active_at(fresh, new[-1]), timeout=10, what="new replica caught up")
        assert (await fresh.store.call(counts))["entities"] == 5
    finally:
        await fresh.stop()


async def test_a_strong_read_finds_a_re_created_stream_before_anything_else_does(nc: NATS, tmp_path: Path) -> None:
    await ensure_wal_stream(nc)
    old = await publish(nc, [entry(i) for i in range(1, 4)])
    replica = ShardReplica(0, store(tmp_path / "a"), nc, "node-a", DIM)
    await replica.start()
    try:
        await wait_for(lambda: _active_at(replica, old[-1]), timeout=10, what="replica caught up")
        await recreate_stream(nc)
        await publish(nc, [entry(20)])  # acknowledged in the new log, at sequence 1
        # The read asks for the log end (1), below the applied position (3): it checks the log and
        # refuses, rather than answer without the write just acknowledged.
        with pytest.raises(Unavailable, match="created again"):
            await replica.wait_strong(0)
        assert replica.state == "diverged"
    finally:
        await replica.stop()


@pytest.mark.parametrize("refill, problem", [(2, "ends at 2"), (6, "another entry at 3")])
async def test_a_log_that_lost_applied_entries_stops_the_replica(
    nc: NATS, tmp_path: Path, refill: int, problem: str
) -> None:
    """As if the stream kept its identity but lost its tail (an unsynced server crashed): shorter
    than the replica's position, or refilled with other entries at the same sequences."""
    await ensure_wal_stream(nc)
    old = await publish(nc, [entry(i) for i in range(1, 4)])
    replica = ShardReplica(0, store(tmp_path / "a"), nc, "node-a", DIM)
    await replica.start()
    await wait_for(lambda: _active_at(replica, old[-1]), timeout=10, what="replica caught up")
    await replica.stop()
    new_id = await recreate_stream(nc)
    await publish(nc, [entry(i, shard=1) for i in range(refill)], shard=1)  # other shards' entries
    db = store(tmp_path / "a")
    await db.open()
    await db.call(write_log_id, new_id)  # the same identity: only the entries tell
    await db.close()
    replica = ShardReplica(0, store(tmp_path / "a"), nc, "node-a", DIM)
    await replica.start()
    try:
        await wait_for(lambda: _state(replica, "diverged"), timeout=10, what="replica stopped")
        assert replica.error is not None and problem in replica.error
        assert replica.applied_seq == old[-1]
    finally:
        await replica.stop()


async def _active_at(replica: ShardReplica, seq: int) -> bool:
    return replica.state == "active" and replica.applied_seq == seq


async def _state(replica: ShardReplica, state: str) -> bool:
    return replica.state == state
