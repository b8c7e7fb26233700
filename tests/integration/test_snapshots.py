"""Snapshots and log retention with real processes (nats-server, coordinator, nodes):

- `torua.cluster.snapshot` snapshots every shard into the object store and the coordinator purges
  the log below it: the stream's first sequence rises above 1 and its message count falls;
- a node added to the cluster, and a node whose data directory was wiped, restore their replicas
  from the snapshots (the purged log could not rebuild them) and end with the other replicas'
  digests;
- recovery time depends on the shard's size, not its history: after 4x more history (the same
  entities rewritten) a wiped replica recovers in at most 1.5x the time it took after 1x;
- a log at its byte limit refuses writes (503) while the coordinator keeps leading, and accepts
  them again once a snapshot let it be purged;
- the snapshot bucket (checksums, pruning) and the purge floor on a real nats-server.
"""

from __future__ import annotations

import asyncio
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from tests.conftest import wait_for
from tests.integration.conftest import TORUA
from tests.integration.test_durability import replicas_converged
from torua import Client, ToruaError
from torua.connect import connect
from torua.model import Entity
from torua.retention import PurgeFloor, SnapshotMeta, log_id_of, read_floor
from torua.streams import ensure_bucket, ensure_snapshot_bucket, ensure_wal_stream
from torua.subjects import CLUSTER_SNAPSHOT, SNAPSHOT_BUCKET, WAL_STREAM, purged_key, wal_subject
from torua.up import LocalCluster
from torua_node.shard.apply import apply_batch
from torua_node.shard.replica import ShardReplica
from torua_node.shard.snapshot import FORMAT, SnapshotCorrupt, Snapshots, file_sha256, restore_candidates
from torua_node.shard.wal import WalEntity, WalEntry, encode_entry
from torua_node.storage.schema import SCHEMA_VERSION
from torua_node.storage.store import ShardStore

pytestmark = pytest.mark.timeout(240)

LOG = 1_700_000_000_000_000  # a stream identity (creation time, µs)
# Purge as soon as the positions allow, snapshot only on request: the test decides when.
RETENTION_ENV = dict(TORUA_PURGE_MARGIN="0", TORUA_PURGE_INTERVAL="0.5", TORUA_SNAPSHOT_EVERY="0",
                     TORUA_REASSIGN_DELAY="120")


async def rewrite(client: Client, ids: list[str], rounds: int, batch: int = 100) -> None:
    """History: the same entities written `rounds` times over (only the last version is content)."""
    for r in range(rounds):
        for i in range(0, len(ids), batch):
            await client.upsert(entities=[Entity(id=e, name=f"{e}-v{r}", description="x" * 200)
                                          for e in ids[i:i + batch]])


async def converged(client: Client) -> dict[int, set[str]]:
    digests = await wait_for(lambda: replicas_converged(client), timeout=60, what="replicas converged", interval=0.3)
    assert all(len(d) == 1 for d in digests.values()), f"replicas differ: {digests}"
    return digests


async def stream_state(nc: NATS) -> Any:
    return (await nc.jetstream().stream_info(WAL_STREAM)).state


async def snapshot(client: Client) -> list[dict[str, Any]]:
    reply = await client.request(CLUSTER_SNAPSHOT, {}, timeout=120)
    return list(reply["shards"])


async def restored(client: Client, node: str) -> dict[int, Any]:
    """The node's replicas that are active and were restored from a snapshot: shard -> position."""
    info = await client.node_info(node)
    return {r["shard"]: r["restored_from"] for r in info.replicas
            if r["state"] == "active" and r.get("restored_from") is not None}


def stop_node(cluster: LocalCluster, node: str) -> None:
    cluster.signal_node(node, signal.SIGTERM)
    cluster.nodes[node].wait(20)


async def test_snapshot_purges_the_log_and_new_and_wiped_nodes_restore(make_cluster: Any) -> None:
    cluster: LocalCluster = make_cluster(nodes=2, shards=4, replicas=2, **RETENTION_ENV)
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=10.0)
    nc = await connect(cluster.url, name="test")
    try:
        await client.wait_for_state("green", timeout=60)
        ids = [f"e{i}" for i in range(200)]
        await rewrite(client, ids, rounds=5)
        before_digests = await converged(client)
        before = await stream_state(nc)
        assert before.first_seq == 1

        # As an operator does it: `torua snapshot`.
        env = {**os.environ, "NATS_URL": cluster.url}
        done = await asyncio.to_thread(subprocess.run, [*TORUA, "snapshot", "--json"], capture_output=True, text=True,
                                       env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        taken = json.loads(done.stdout)["shards"]
        assert sorted(t["shard"] for t in taken) == [0, 1, 2, 3]
        assert all(t["seq"] > 0 and t["bytes"] > 0 for t in taken)
        infos = await (await nc.jetstream().object_store(SNAPSHOT_BUCKET)).list()
        assert len([i for i in infos if not i.deleted]) == 4

        async def purged() -> Any:
            state = await stream_state(nc)
            return state if state.first_seq > 1 and state.messages < before.messages else None

        after = await wait_for(purged, timeout=30, what="the log purged below the snapshots")
        assert after.messages <= before.messages // 2, (before.messages, after.messages)

        # A node added: it takes replicas the log alone can no longer build.
        cluster.start_node("node-3")
        await wait_for(lambda: restored(client, "node-3"), timeout=60, what="node-3 restored replicas")
        await client.upsert(entities=[Entity(id=e, name=f"{e}-after") for e in ids[:20]])  # a tail to replay
        digests = await converged(client)
        assert (await client.get("e0")).entity.name == "e0-after"
        assert (await client.get("e199")).entity.name == "e199-v4"

        # A node whose data directory was wiped: same, from the snapshots.
        stop_node(cluster, "node-1")
        shutil.rmtree(cluster.opts.data_dir / "node-1")
        cluster.start_node("node-1")
        hosted = (await client.cluster_shards()).shards_of("node-1")
        assert hosted
        got = await wait_for(lambda: _all_restored(client, "node-1", hosted), timeout=60, what="node-1 restored")
        assert set(got) == hosted
        digests = await converged(client)
        assert set(digests) == set(before_digests)
    finally:
        await nc.close()
        await client.close()


async def _node_replicas(client: Client, node: str, shards: set[int]) -> dict[int, Any] | None:
    """Every one of `shards` active on `node` and restored from a snapshot, or None; the last
    replicas seen are kept for the failure message."""
    info = await client.node_info(node)
    got = {r["shard"]: r["restored_from"] for r in info.replicas
           if r["state"] == "active" and r.get("restored_from") is not None}
    if set(got) >= shards:
        return got
    raise AssertionError(f"{node} replicas: {[(r['shard'], r['state'], r.get('restored_from'), r.get('error')) for r in info.replicas]}")


async def _all_restored(client: Client, node: str, shards: set[int]) -> dict[int, Any] | None:
    got = await restored(client, node)
    return got if set(got) >= shards else None


async def _recovery_s(cluster: LocalCluster, client: Client, node: str) -> float:
    """Wipe `node`, start it again, and time until every replica it hosts is active at the log's end."""
    stop_node(cluster, node)
    shutil.rmtree(cluster.opts.data_dir / node)
    started = time.monotonic()
    cluster.start_node(node)
    await converged(client)
    return time.monotonic() - started


async def test_recovery_time_depends_on_size_not_history(make_cluster: Any) -> None:
    # One node holds every shard's only replica; snapshot and purge after each history, then time
    # how long that node takes to come back from a wiped data directory.
    cluster: LocalCluster = make_cluster(nodes=1, shards=2, replicas=1, **RETENTION_ENV)
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=10.0)
    try:
        await client.wait_for_state("green", timeout=60)
        ids = [f"e{i}" for i in range(400)]
        await rewrite(client, ids, rounds=5)
        await converged(client)
        await snapshot(client)
        # The best of two: the machine is shared, and one slow process start is not what is measured.
        one_x = min([await _recovery_s(cluster, client, "node-1") for _ in range(2)])

        await rewrite(client, ids, rounds=15)  # 4x the history in all, the same entities
        await converged(client)
        await snapshot(client)
        four_x = min([await _recovery_s(cluster, client, "node-1") for _ in range(2)])
        restored_at = await restored(client, "node-1")
        assert set(restored_at) == {0, 1}
        print(f"recovery after 1x history {one_x:.2f}s, after 4x {four_x:.2f}s")
        assert four_x <= 1.5 * one_x, (one_x, four_x)
    finally:
        await client.close()


# --- the snapshot bucket and the purge floor, on a real nats-server ----------------------------------


async def test_snapshot_store_round_trip_checksum_and_pruning(nc: NATS, tmp_path: Path) -> None:
    await ensure_snapshot_bucket(nc)
    await ensure_bucket(nc)
    snaps = Snapshots(nc)
    src = tmp_path / "graph.kuzu"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several chunks and a partial one
    metas = []
    for seq in (10, 20, 30):
        m = SnapshotMeta(shard=2, seq=seq, log_id=LOG, sha256=file_sha256(src), size=src.stat().st_size,
                         schema=SCHEMA_VERSION, format=FORMAT)
        await snaps.upload(src, m)
        metas.append(m)
    assert sorted(m.seq for m in await snaps.list(2)) == [10, 20, 30]
    assert await snaps.list(3) == []

    out = tmp_path / "restored" / "graph.kuzu"
    await snaps.download(metas[-1], out)
    assert out.read_bytes() == src.read_bytes()

    # A snapshot whose recorded checksum does not match what is stored is refused, and not left behind.
    wrong = SnapshotMeta(shard=2, seq=40, log_id=LOG, sha256="0" * 64, size=src.stat().st_size,
                         schema=SCHEMA_VERSION, format=FORMAT)
    await snaps.upload(src, wrong)
    with pytest.raises(SnapshotCorrupt, match="SHA-256"):
        await snaps.download(wrong, tmp_path / "bad" / "graph.kuzu")
    assert not (tmp_path / "bad" / "graph.kuzu").exists()

    deleted = await snaps.prune(2, keep=2)
    assert [m.seq for m in deleted] == [10, 20]
    assert sorted(m.seq for m in await snaps.list(2)) == [30, 40]
    assert [m.seq for m in restore_candidates(await snaps.list(2), 2, LOG)] == [40, 30]


async def test_purge_floor_is_read_for_the_current_log_only(nc: NATS) -> None:
    kv = await ensure_bucket(nc)
    assert await read_floor(nc, 1, LOG) == 1  # nothing purged yet
    await kv.put(purged_key(1), msgspec.json.encode(PurgeFloor(below=500, log_id=LOG, snapshot_seq=500)))
    assert await read_floor(nc, 1, LOG) == 500
    assert await read_floor(nc, 1, LOG + 1) == 1  # a re-created stream: nothing of it purged
    assert await read_floor(nc, 2, LOG) == 1


async def test_a_full_log_refuses_writes_while_the_control_plane_works(make_cluster: Any) -> None:
    # The log limited to 16 MB (its own reservation in JetStream's store): writes beyond it are
    # refused with 503, the coordinator keeps leading (its lease lives in KV), and once a snapshot
    # lets the log be purged, writes are accepted again.
    cluster: LocalCluster = make_cluster(nodes=1, shards=2, replicas=1, TORUA_WAL_MAX_BYTES=str(16 * 1024 * 1024),
                                         **RETENTION_ENV)
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=10.0, retries=0)
    nc = await connect(cluster.url, name="test")
    try:
        await client.wait_for_state("green", timeout=60)
        assert (await nc.jetstream().stream_info(WAL_STREAM)).config.max_bytes == 16 * 1024 * 1024
        refused: ToruaError | None = None
        for i in range(400):  # ~100 kB per write: the log fills after ~160
            try:
                await client.upsert(entities=[Entity(id=f"e{i % 20}-{j}", name=f"v{i}", description="x" * 10_000)
                                              for j in range(10)])
            except ToruaError as exc:
                refused = exc
                break
        assert refused is not None and refused.code == 503, refused
        assert "TORUA_WAL_MAX_BYTES" in refused.description, refused.description
        await asyncio.sleep(4.0)  # more than the lease's TTL: the leader must have renewed it in KV
        health = await client.cluster_health()
        assert health.leader
        assert (await client.cluster_info()).state == "green"

        await converged(client)
        await snapshot(client)
        await wait_for(lambda: _stream_first_above_one(nc), timeout=30, what="the full log purged")
        await client.upsert(entities=[Entity(id="after", name="after the purge")])
        assert (await client.get("after")).entity.name == "after the purge"
    finally:
        await nc.close()
        await client.close()


async def _stream_first_above_one(nc: NATS) -> bool:
    return bool((await stream_state(nc)).first_seq > 1)


async def test_a_node_back_with_data_behind_the_purged_log_restores(make_cluster: Any) -> None:
    # node-2 stops keeping its data; once the map drops it (TORUA_REASSIGN_DELAY), the log is purged
    # past what node-2 holds. When it returns, its databases are behind the purge floor: each is
    # discarded and restored from a snapshot (never continued past the missing entries).
    cluster: LocalCluster = make_cluster(nodes=2, shards=2, replicas=2,
                                         **{**RETENTION_ENV, "TORUA_REASSIGN_DELAY": "1.5"})
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=10.0)
    nc = await connect(cluster.url, name="test")
    try:
        await client.wait_for_state("green", timeout=60)
        ids = [f"e{i}" for i in range(100)]
        await rewrite(client, ids, rounds=2)
        await converged(client)
        held = (await stream_state(nc)).last_seq  # node-2 applied the log this far, and keeps it
        stop_node(cluster, "node-2")

        async def dropped() -> bool:
            return not (await client.cluster_shards()).shards_of("node-2")

        await wait_for(dropped, timeout=60, what="the map to drop node-2")
        await rewrite(client, ids, rounds=3)
        before = await stream_state(nc)
        await snapshot(client)

        async def purged() -> bool:
            # Every entry node-2 applied is gone (the snapshot stands wherever node-1 had applied
            # when it was taken: past node-2's position, not necessarily at the log's end).
            state = await stream_state(nc)
            return state.first_seq > held and state.messages < before.messages

        await wait_for(purged, timeout=60, what="the log purged past node-2's position")

        cluster.start_node("node-2")
        got = await wait_for(lambda: _node_replicas(client, "node-2", {0, 1}), timeout=90,
                             what="node-2's replicas restored from snapshots")
        assert set(got) == {0, 1}
        await converged(client)
        log_text = (cluster.logs / "node-2.log").read_text(errors="replace")
        assert "purged past this replica's position" in log_text
    finally:
        await nc.close()
        await client.close()


class GatedStore:
    """A real shard store whose applies wait for `gate` once it is closed."""

    def __init__(self, real: ShardStore) -> None:
        self.real = real
        self.gate = asyncio.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def call(self, fn: Any, *args: Any) -> Any:
        if fn is apply_batch:
            await self.gate.wait()
        return await self.real.call(fn, *args)


async def test_a_running_replica_finding_its_entries_purged_restores_instead_of_skipping(
    nc: NATS, tmp_path: Path
) -> None:
    await ensure_wal_stream(nc)
    kv = await ensure_bucket(nc)
    await ensure_snapshot_bucket(nc)
    js = nc.jetstream()
    seqs = [(await js.publish(wal_subject(0), _entry(i), stream=WAL_STREAM)).seq for i in (1, 2)]
    gated = GatedStore(ShardStore(tmp_path / "graph.kuzu", buffer_pool_mb=32, max_db_size_gb=1, shard=0))
    replica = ShardReplica(0, gated, nc, "node-a", 4)  # type: ignore[arg-type]
    behind: list[int] = []
    replica.on_behind = behind.append
    await replica.start()
    try:
        await wait_for(lambda: _at(replica, seqs[-1]), timeout=10, what="the first entries applied")
        gated.gate.clear()
        third = (await js.publish(wal_subject(0), _entry(3), stream=WAL_STREAM)).seq  # fetched, held at apply
        await asyncio.sleep(1.5)
        await js.publish(wal_subject(1), _entry(4, shard=1), stream=WAL_STREAM)  # another shard: a gap
        lost = (await js.publish(wal_subject(0), _entry(5), stream=WAL_STREAM)).seq
        last = (await js.publish(wal_subject(0), _entry(6), stream=WAL_STREAM)).seq
        # The purger, not knowing this replica, purges shard 0 below `last` (floor first, then purge).
        log_id = log_id_of((await js.stream_info(WAL_STREAM)).created)  # type: ignore[arg-type]
        await kv.put(purged_key(0), msgspec.json.encode(PurgeFloor(below=last, log_id=log_id)))
        await js.purge_stream(WAL_STREAM, seq=last, subject=wal_subject(0))
        gated.gate.set()
        await wait_for(lambda: _true(behind == [0]), timeout=10, what="the replica handed over for a restore")
        assert replica.applied_seq in (seqs[-1], third)  # never past the purged entries to `last`
        assert third < lost < last
        assert replica.state == "recovering" and "purged past" in (replica.error or "")
    finally:
        await replica.stop()


def _entry(i: int, shard: int = 0) -> bytes:
    return encode_entry(WalEntry(request_id=f"r{shard}-{i}", ts=float(i), entities=[
        WalEntity(id=f"e{shard}-{i}", name=f"entity {i}", type="T", description="", properties="{}",
                  embedding=bytes(16))]))


async def _at(replica: ShardReplica, seq: int) -> bool:
    return replica.applied_seq >= seq


async def _true(value: bool) -> bool:
    return value


async def test_replicas_snapshot_every_n_entries_keep_the_newest_and_the_log_follows(make_cluster: Any) -> None:
    cluster: LocalCluster = make_cluster(nodes=2, shards=1, replicas=2, **{
        **RETENTION_ENV, "TORUA_SNAPSHOT_EVERY": "10", "TORUA_SNAPSHOT_KEEP": "2"})
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=10.0)
    nc = await connect(cluster.url, name="test")
    try:
        await client.wait_for_state("green", timeout=60)
        for i in range(60):  # one entry each, all on shard 0
            await client.upsert(entities=[Entity(id=f"e{i % 5}", name=f"v{i}")])
        await converged(client)
        store = await nc.jetstream().object_store(SNAPSHOT_BUCKET)

        async def purged_to_the_oldest_kept() -> tuple[list[int], Any] | None:
            # Replicas may still take a snapshot as the last entries apply (pruning the oldest kept
            # and moving the purge): poll until the log's start and the two kept snapshots agree.
            seqs = sorted(int(i.headers["Torua-Seq"][0]) for i in await store.list() if not i.deleted and i.headers)
            state = await stream_state(nc)
            done = len(seqs) == 2 and seqs[0] < seqs[1] and seqs[1] >= 40 and state.first_seq == seqs[0]
            return (seqs, state) if done else None

        # Purged below the oldest kept snapshot (margin 0), not below the newest.
        seqs, state = await wait_for(purged_to_the_oldest_kept, timeout=30,
                                     what="two automatic snapshots kept and the log purged below the oldest")
        assert state.first_seq == seqs[0] < seqs[1]
    finally:
        await nc.close()
        await client.close()


