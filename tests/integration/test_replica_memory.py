"""A replica whose Kuzu buffer pool runs out reopens its database, retries in smaller batches and
catches up: nothing skipped, nothing crashed, the same content as a replica that never ran short.

kuzu 0.11.3 keeps buffer-pool memory it no longer needs until the database closes, and crashed the
process (SIGSEGV) when the same database was used again after the pool ran out; a transaction
larger than the pool fails however often it is retried.
"""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
from pathlib import Path

import numpy as np
from nats.aio.client import Client as NATS

from torua.streams import ensure_wal_stream
from torua.subjects import WAL_STREAM, wal_subject
from torua_node.shard.apply import apply_batch
from torua_node.storage.digest import content_digest, counts
from torua_node.node.replicas import ReplicaManager
from torua_node.shard.wal import WalEntity, WalEntry, WalRelation, encode_entry

from tests.conftest import wait_for
from tests.unit.test_apply import shard_db

DIM = 8
ENTRIES, ENTITIES_PER_ENTRY = 30, 500


def log_entries() -> list[bytes]:
    n = ENTRIES * ENTITIES_PER_ENTRY
    ids = [f"entity-{i:06d}" for i in range(n)]
    vecs = np.random.default_rng(3).standard_normal((n, DIM)).astype("<f4")
    out = []
    for k in range(ENTRIES):
        part = range(k * ENTITIES_PER_ENTRY, (k + 1) * ENTITIES_PER_ENTRY)
        out.append(encode_entry(WalEntry(
            request_id=f"req-{k}", ts=float(k),
            entities=[WalEntity(id=ids[i], name=f"name {i}", type="T", description="d" * 40, properties="{}",
                                embedding=vecs[i].tobytes()) for i in part],
            relations=[WalRelation(source=ids[i], target=ids[(i + step) % n], type="R", weight=1.0,
                                   properties="{}", chunks=()) for i in part for step in (1, 7)])))
    return out


async def test_a_replica_short_of_buffer_pool_reopens_and_catches_up(nc: NATS, tmp_path: Path) -> None:
    await ensure_wal_stream(nc)
    log = log_entries()
    js = nc.jetstream()
    for raw in log:  # all in the log before the replica starts: its first batch is all of them
        await js.publish(wal_subject(0), raw, stream=WAL_STREAM)
    # 24 MiB: with versioned writes (a Version row per entity and relation, for last-writer-wins) this
    # log no longer fits 16 MiB at all — its 28th entry needs more than the pool; 24 still runs short.
    replicas = ReplicaManager(tmp_path / "shards", node_id="node-1", buffer_pool_mb=24, max_db_size_gb=1)
    try:
        await replicas.reconcile({0}, nc, DIM)
        replica = replicas.replicas[0]

        async def caught_up() -> bool:
            return replica.applied_seq == len(log)

        await wait_for(caught_up, timeout=240, what=f"all {len(log)} entries applied with a 24 MiB pool")
        assert replica.reopens >= 1  # it did run short (else this test proves nothing)
        assert replica.failures == 0 and replica.error is None
    finally:
        await replicas.close_all()
    # Read back with a larger pool: a full dump does not fit in 24 MiB.
    with shard_db(replica.store.path, dim=DIM) as got:
        assert counts(got)["entities"] == ENTRIES * ENTITIES_PER_ENTRY
        assert counts(got)["relations"] == 2 * ENTRIES * ENTITIES_PER_ENTRY
        digest = content_digest(got)
    with shard_db(tmp_path / "reference", dim=DIM) as ref:  # one entry at a time, never short
        for seq, raw in enumerate(log, 1):
            assert apply_batch(ref, [(seq, raw)], DIM).error is None
        assert content_digest(ref) == digest
