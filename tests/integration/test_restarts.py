"""Restarts keep data; decommissioning is explicit.

Real nats-server, coordinator and node processes (R=2), stopped with real signals, while readers
(and a writer) keep going on their own connection:

- every node SIGTERMed and restarted in turn: no read fails or is partial; each node stops within
  10 s, keeps its assignments, and reopens its replicas at their applied_seq, not from 0;
- `torua drain NODE` moves a node's replicas away make-before-break, reporting progress, with no
  failed or partial read; the node stays drained across a restart until the drain is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field

import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from torua import Client, ToruaError
from torua.connect import connect
from torua.endpoints import Endpoint, add_endpoints
from torua.errors import BadRequest, Conflict
from torua.model import Entity, Relation, Tokens
from torua.up import LocalCluster
from torua.wire import Empty

from tests.conftest import wait_for
from tests.integration.conftest import TORUA
from tests.integration.test_durability import merge_tokens, replicas_converged
from tests.integration.test_membership import _balanced_map, read_kv_map

pytestmark = pytest.mark.timeout(240)

NODES = ("node-1", "node-2", "node-3")
# Long enough that no restart here reaches it: replicas must stay with their stopped node.
REASSIGN_DELAY = "120"
STOP_WITHIN_S = 10.0


def name_of(entity_id: str) -> str:
    return entity_id.upper()


@dataclass
class Reads:
    total: int = 0
    failed: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    slowest_s: float = 0.0

    def problems(self) -> list[str]:
        return self.failed + self.partial + self.wrong


async def seed(client: Client, n: int = 48) -> tuple[list[str], dict[str, set[str]]]:
    """Entities in a ring (each linked to the next), so every read has a known answer."""
    ids = [f"seed-{i}" for i in range(n)]
    rels = [Relation(source=a, target=ids[(i + 1) % n], type="NEXT") for i, a in enumerate(ids)]
    await client.upsert(entities=[Entity(id=i, name=name_of(i)) for i in ids], relations=rels)
    for i in range(0, n, 8):
        await client.kv_put(f"key-{i}", f"value-{i}")
    neighbours = {a: {ids[(i + 1) % n], ids[(i - 1) % n]} for i, a in enumerate(ids)}
    return ids, neighbours


async def reader(client: Client, ids: list[str], neighbours: dict[str, set[str]], reads: Reads,
                 stop: asyncio.Event, seed_: int) -> None:
    """Strong reads (the default), one after another: get, 1-hop neighbours (a fan-out), kv.get."""
    rng = random.Random(seed_)
    while not stop.is_set():
        entity_id = rng.choice(ids)
        kind = rng.choice(("get", "neighbors", "kv"))
        started = time.monotonic()
        try:
            if kind == "get":
                got = (await client.get(entity_id)).entity.name
                if got != name_of(entity_id):
                    reads.wrong.append(f"get {entity_id}: {got!r}")
            elif kind == "neighbors":
                reply = await client.neighbors([entity_id], hops=1)
                if reply.partial:
                    reads.partial.append(f"neighbors {entity_id}: {reply.shards}")
                elif not neighbours[entity_id] <= {n.id for n in reply.nodes}:
                    reads.wrong.append(f"neighbors {entity_id}: {sorted(n.id for n in reply.nodes)}")
            else:
                i = rng.randrange(0, len(ids), 8)
                got = await client.kv_get(f"key-{i}")
                if got != f"value-{i}":
                    reads.wrong.append(f"kv key-{i}: {got!r}")
        except ToruaError as exc:
            reads.failed.append(f"{kind} {entity_id}: {exc.code} {exc.description}")
        reads.total += 1
        reads.slowest_s = max(reads.slowest_s, time.monotonic() - started)


async def writer(client: Client, acked: set[str], failed: list[str], tokens: Tokens, stop: asyncio.Event) -> None:
    """Keeps every shard's log growing, so a restarted replica has entries to catch up on."""
    i = 0
    while not stop.is_set():
        ids = [f"w-{i}-{j}" for j in range(4)]
        i += 1
        try:
            reply = await client.upsert(entities=[Entity(id=e, name=name_of(e)) for e in ids])
        except ToruaError as exc:
            failed.append(f"{ids[0]}: {exc.code} {exc.description}")
            continue
        acked.update(ids)
        merge_tokens(tokens, reply.tokens)
        await asyncio.sleep(0.02)  # pacing, not waiting on anything: a write every ~20 ms


async def node_status(client: Client, node: str) -> str | None:
    return next((n.status for n in (await client.cluster_nodes()).nodes if n.id == node), None)


async def back_and_green(client: Client, node: str, assigned: set[int]) -> bool:
    info = await client.cluster_info()
    if info.state != "green" or info.nodes.healthy != len(NODES):
        return False
    replicas = (await client.node_info(node)).replicas
    return {r["shard"] for r in replicas} == assigned and all(r["state"] == "active" for r in replicas)


async def test_rolling_restart_under_readers_keeps_data_and_fails_no_read(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(nodes=3, shards=8, replicas=2, TORUA_REASSIGN_DELAY=REASSIGN_DELAY)
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=5.0)
    readers_client = await Client.connect(cluster.url, request_timeout=5.0)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await client.wait_for_state("green", timeout=30)
        smap = await wait_for(lambda: _balanced_map(client, set(NODES)), timeout=20, what="a settled map")
        ids, neighbours = await seed(client)
        reads, acked, write_failures = Reads(), set[str](), list[str]()
        tokens: Tokens = {}
        tasks = [
            *(asyncio.create_task(reader(readers_client, ids, neighbours, reads, stop, k)) for k in range(2)),
            asyncio.create_task(writer(client, acked, write_failures, tokens, stop)),
        ]
        await wait_for(lambda: _true(reads.total >= 20), timeout=20, what="the readers under way")
        stop_times: dict[str, float] = {}
        for node in NODES:
            assigned = smap.shards_of(node)
            before = {r["shard"]: r["applied_seq"] for r in (await client.node_info(node)).replicas}
            assert set(before) == assigned and all(seq > 0 for seq in before.values()), before
            signalled = time.monotonic()
            cluster.signal_node(node, signal.SIGTERM)
            code = await asyncio.to_thread(cluster.nodes[node].wait, 30)
            stop_times[node] = time.monotonic() - signalled
            assert code == 0, f"{node} exited {code} after SIGTERM"
            assert stop_times[node] < STOP_WITHIN_S, f"{node} took {stop_times[node]:.1f}s to stop"
            # Absent, not decommissioned: it keeps its replicas in the map.
            await wait_for(lambda: _is(node_status(client, node), "unhealthy"), timeout=10, what=f"{node} absent")
            assert (await read_kv_map(client)).shards_of(node) == assigned
            done = reads.total
            await wait_for(lambda: _true(reads.total >= done + 10), timeout=20, what="reads while it is down")
            cluster.start_node(node)
            await wait_for(lambda: back_and_green(client, node, assigned), timeout=60, what=f"{node} back, green")
            # Reopened from disk where it stopped (at least where it was just before the signal),
            # not rebuilt from an empty database.
            for r in (await client.node_info(node)).replicas:
                opened, seen = r["opened_at_seq"], before[r["shard"]]
                assert seen <= opened <= r["applied_seq"], (node, r["shard"], seen, opened, r["applied_seq"])
            assert (await read_kv_map(client)).shards_of(node) == assigned, "its replicas were moved"
        stop.set()
        await asyncio.gather(*tasks)
        print(
            f"reads: {reads.total}, slowest {reads.slowest_s:.2f}s; writes acknowledged: {len(acked)}, "
            f"failed: {len(write_failures)}; stop times: "
            + ", ".join(f"{n} {s:.1f}s" for n, s in stop_times.items())
        )
        assert reads.problems() == [], reads.problems()[:10]
        assert reads.total > 100
        assert write_failures == []
        # Every replica ends at the end of its log with the same content, and nothing acknowledged is missing.
        digests = await wait_for(lambda: replicas_converged(client), timeout=60, what="replicas converged")
        assert all(len(d) == 1 for d in digests.values()), digests
        for entity_id in sorted(acked):
            assert (await client.get(entity_id, after=tokens)).entity.name == name_of(entity_id)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await readers_client.close()
        await client.close()


async def test_a_stopping_service_answers_the_requests_it_has_taken(nc: NATS) -> None:
    """Stopping a service drains its endpoints: requests already delivered are answered, not dropped
    (nats.micro's own stop unsubscribes, which drops them and cancels the one being handled)."""
    release = asyncio.Event()
    handling = asyncio.Event()

    async def slow(_: Empty) -> dict[str, bool]:
        handling.set()
        await release.wait()
        return {"ok": True}

    service = await add_endpoints(
        nc, name="stop-test", version="0.0.1", description="t",
        endpoints=[Endpoint("slow", "test.slow", slow, Empty, "one at a time")],  # not concurrent
    )
    caller = await connect(nc.connected_url.geturl(), name="caller")
    try:
        requests = [asyncio.create_task(caller.request("test.slow", b"{}", timeout=10)) for _ in range(5)]
        await caller.flush()
        await asyncio.wait_for(handling.wait(), 5)
        stopping = asyncio.create_task(service.stop(grace=10))
        await asyncio.sleep(0)  # let stop() begin before the handler is released
        release.set()
        replies = await asyncio.gather(*requests)
        await stopping
        assert [json.loads(r.data) for r in replies] == [{"ok": True}] * 5
        with pytest.raises(NoRespondersError):
            await caller.request("test.slow", b"{}", timeout=2)
    finally:
        await caller.close()


def torua_cli(cluster: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": cluster.url}
    env.pop("TORUA_DEBUG", None)
    return subprocess.run([*TORUA, *args], capture_output=True, text=True, env=env, timeout=timeout)


async def test_drain_moves_replicas_away_and_the_node_stays_drained(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(nodes=3, shards=8, replicas=2, TORUA_REASSIGN_DELAY=REASSIGN_DELAY)
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=5.0)
    readers_client = await Client.connect(cluster.url, request_timeout=5.0)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await client.wait_for_state("green", timeout=30)
        await wait_for(lambda: _balanced_map(client, set(NODES)), timeout=20, what="a settled map")
        ids, neighbours = await seed(client)
        reads = Reads()
        tasks = [asyncio.create_task(reader(readers_client, ids, neighbours, reads, stop, k)) for k in range(2)]

        # `torua drain NODE` waits until the node holds nothing, printing progress as it goes.
        run = await asyncio.to_thread(torua_cli, cluster, "drain", "node-2")
        assert run.returncode == 0, run.stderr
        lines = run.stdout.strip().splitlines()
        assert lines[0].startswith("node-2: draining, ") and "shard(s) left" in lines[0], run.stdout
        assert lines[-1].startswith("node-2: drained, it holds no replica"), run.stdout
        smap = await read_kv_map(client)
        assert "node-2" not in {n for e in smap.shards for n in e.hosts()}
        for entry in smap.shards:
            assert sorted(entry.replicas) == ["node-1", "node-3"] and not entry.leaving, entry

        async def node2_empty() -> bool:
            return (await client.node_info("node-2")).replicas == []

        await wait_for(node2_empty, timeout=15, what="node-2 closing its last replicas")
        assert await node_status(client, "node-2") == "draining"
        status = await client.drain_status("node-2")
        assert (status.done, status.remaining, status.shards) == (True, 0, [])
        assert (await client.cluster_info()).state == "green"

        # Draining another would leave one node for two replicas of each shard.
        with pytest.raises(Conflict, match="would leave 1 node"):
            await client.drain("node-1")
        with pytest.raises(BadRequest, match=r"\$\.node"):
            await client.request("torua.cluster.drain", {"node": "no.dots"})

        # A drained node that is stopped leaves the cluster; started again, it is still drained.
        cluster.signal_node("node-2", signal.SIGTERM)
        assert await asyncio.to_thread(cluster.nodes["node-2"].wait, 30) == 0
        await wait_for(lambda: _is(node_status(client, "node-2"), None), timeout=10, what="node-2 gone")
        cluster.start_node("node-2")
        await wait_for(lambda: _is(node_status(client, "node-2"), "draining"), timeout=30, what="node-2 back, drained")
        assert (await client.drain_status("node-2")).done
        assert (await client.node_info("node-2")).draining

        # Cancelled, it takes its share again.
        reply = await client.cancel_drain("node-2")
        assert not reply.draining and reply.status == "healthy"
        await wait_for(lambda: _balanced_map(client, set(NODES)), timeout=60, what="node-2 rebalanced in")
        run = await asyncio.to_thread(torua_cli, cluster, "status", "--wait", "green", "--wait-timeout", "60")
        assert run.returncode == 0 and "state GREEN" in run.stdout.splitlines()[0], (run.stdout, run.stderr)

        stop.set()
        await asyncio.gather(*tasks)
        print(f"reads: {reads.total}, slowest {reads.slowest_s:.2f}s")
        assert reads.problems() == [], reads.problems()[:10]
        assert reads.total > 50
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await readers_client.close()
        await client.close()


async def _true(value: bool) -> bool:
    return value


async def _is(probe, expected: object) -> bool:  # type: ignore[no-untyped-def]
    return await probe == expected
