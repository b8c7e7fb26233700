"""The fenced coordinator (docs/consistency.md#a-fenced-coordinator), with real nats-server,
coordinator and node processes and real signals: a paused ex-leader resumed after a takeover, and a
coordinator killed and restarted under the same id in the middle of a move."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import time
from pathlib import Path

import msgspec
import pytest
from nats.js.kv import KeyValue

from torua import subjects
from torua.client import Client
from torua.model import Entity
from torua.up import LocalCluster
from torua.wire import ShardMap

from tests.conftest import wait_for
from tests.integration.test_membership import green_with, read_kv_map
from tests.integration.test_restarts import Reads, name_of, reader, seed

pytestmark = pytest.mark.timeout(90)


class MapHistory:
    """Every value the shard map key takes, in KV order (a live watch: the bucket keeps only 5)."""

    def __init__(self) -> None:
        self.maps: list[tuple[int, ShardMap]] = []  # (KV revision, map)
        self._task: asyncio.Task[None] | None = None

    async def start(self, client: Client) -> None:
        js = client.nc.jetstream()
        kv: KeyValue = await wait_for(lambda: js.key_value(subjects.KV_BUCKET), timeout=20, what="the KV bucket")
        watcher = await kv.watch(subjects.KV_SHARDMAP)

        async def follow() -> None:
            async for entry in watcher:
                if entry is not None and entry.value:
                    self.maps.append((entry.revision or 0, msgspec.json.decode(entry.value, type=ShardMap)))

        self._task = asyncio.create_task(follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def check(self) -> None:
        """Epochs never decrease; once every shard served, no map leaves a shard without a serving copy."""
        revisions = [r for r, _ in self.maps]
        assert revisions == sorted(revisions), revisions
        epochs = [m.epoch for _, m in self.maps]
        assert all(a <= b for a, b in itertools.pairwise(epochs)), f"epoch went down: {epochs}"
        served = False
        for rev, m in self.maps:
            serving = [e for e in m.shards if set(e.active) & set(e.hosts())]
            served = served or len(serving) == m.num_shards
            if served:
                assert len(serving) == m.num_shards, f"KV revision {rev}: a shard without a serving replica: {m}"


def log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_paused_ex_leader_cannot_move_the_map_back(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(nodes=3, shards=4, replicas=2, TORUA_LEASE_TTL="2")
    history = MapHistory()
    cluster.start_nats()
    # Short: while paused, the ex-leader still holds its admin endpoints, and a request it gets times out.
    client = await Client.connect(cluster.url, request_timeout=1.0)
    first = cluster.start_coordinator("coordinator-1")
    standby: subprocess.Popen[bytes] | None = None
    try:
        await history.start(client)
        for i in (1, 2, 3):
            cluster.start_node(f"node-{i}")
        await wait_for(lambda: green_with(client, 3), timeout=30, what="green with 3 nodes")
        standby = cluster.start_coordinator("coordinator-2")
        c2_log = cluster.logs / "coordinator-2.log"
        await wait_for(lambda: _true(log_has(c2_log, "coordinator coordinator-2 started")), timeout=20,
                       what="the standby following membership")
        before = (await read_kv_map(client)).epoch

        first.send_signal(signal.SIGSTOP)  # past its lease: the standby takes over
        await wait_for(lambda: _led_by(client, "coordinator-2"), timeout=20, what="coordinator-2 leading")
        cluster.signal_node("node-3", signal.SIGKILL)  # and the map changes under the new leader

        async def node3_gone() -> bool:
            smap = await read_kv_map(client)
            return "node-3" not in {n for e in smap.shards for n in e.hosts()} and await green_with(client, 2)

        await wait_for(node3_gone, timeout=30, what="node-3's replicas moved by coordinator-2")

        first.send_signal(signal.SIGCONT)
        c1_log = cluster.logs / "coordinator-1.log"
        await wait_for(lambda: _true(log_has(c1_log, "lost leadership")), timeout=20,
                       what="the resumed ex-leader stepping down")
        await wait_for(lambda: green_with(client, 2), timeout=20, what="still green on 2 nodes")
        info = await client.cluster_info()
        assert info.leader == "coordinator-2"
        smap = await read_kv_map(client)
        assert smap.epoch > before
        assert "node-3" not in {n for e in smap.shards for n in e.hosts()}
        await asyncio.sleep(0)  # let the watch deliver what it has
        await wait_for(lambda: _true(history.maps[-1][1].revision == smap.revision), timeout=5,
                       what="the watch reaching the last map")
        history.check()
        assert len({m.epoch for _, m in history.maps}) >= 2
    finally:
        await history.stop()
        await client.close()
        stop_process(first)
        if standby is not None:
            stop_process(standby)


async def test_coordinator_restarted_with_same_id_mid_move_fails_no_read(make_cluster) -> None:
    # One copy per shard: while a shard moves to the new node, the old copy is its only serving one.
    cluster: LocalCluster = make_cluster(nodes=1, shards=4, replicas=1, TORUA_REASSIGN_DELAY="60")
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=5.0)
    readers_client = await Client.connect(cluster.url, request_timeout=5.0)
    history = MapHistory()
    stop = asyncio.Event()
    reads = Reads()
    tasks: list[asyncio.Task[None]] = []
    try:
        await history.start(client)
        await wait_for(lambda: green_with(client, 1), timeout=30, what="green with 1 node")
        ids, neighbours = await seed(client)
        # A longer log for the new node's replicas to catch up on: the move lasts a while.
        for b in range(BULK_BATCHES):
            await client.upsert(entities=[Entity(id=f"bulk-{b}-{j}", name=name_of(f"bulk-{b}-{j}")) for j in range(500)])
        tasks = [asyncio.create_task(reader(readers_client, ids, neighbours, reads, stop, s)) for s in (1, 2)]

        cluster.start_node("node-2")

        async def moving() -> bool:
            return any(e.leaving for e in (await read_kv_map(client)).shards)

        await wait_for(moving, timeout=30, what="replicas moving to node-2", interval=0.02)
        old = cluster.coordinator
        assert old is not None
        old.send_signal(signal.SIGKILL)
        old.wait()
        killed_at = time.monotonic()
        cluster.start_coordinator("coordinator-1")

        async def moved() -> bool:
            smap = await read_kv_map(client)
            return (
                smap.epoch >= 2
                and all(not e.leaving and set(e.active) == set(e.replicas) for e in smap.shards)
                and {n for e in smap.shards for n in e.replicas} == {"node-1", "node-2"}
                and await green_with(client, 2)
            )

        await wait_for(moved, timeout=45, what="the move finished under the restarted coordinator")
        stop.set()
        await asyncio.gather(*tasks)
        took = time.monotonic() - killed_at
        assert reads.total > 20, reads
        assert not reads.problems(), f"{len(reads.problems())} of {reads.total} reads: {reads.problems()[:5]}"
        history.check()
        # The restarted coordinator took over while the move was still under way.
        first_of_new_term = next(m for _, m in history.maps if m.epoch >= 2)
        assert any(e.leaving for e in first_of_new_term.shards), (took, first_of_new_term)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await history.stop()
        await client.close()
        await readers_client.close()


BULK_BATCHES = 8


async def _true(value: bool) -> bool:
    return value


async def _led_by(client: Client, coordinator: str) -> bool:
    return (await client.cluster_info()).leader == coordinator
