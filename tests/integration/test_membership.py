"""Real coordinator and node processes on a real nats-server, killed with real signals."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import msgspec
import pytest

from torua import subjects
from torua.client import Client
from torua.up import LocalCluster
from torua.wire import ShardMap

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


async def read_kv_map(client: Client) -> ShardMap:
    kv = await client.nc.jetstream().key_value(subjects.KV_BUCKET)
    entry = await kv.get(subjects.KV_SHARDMAP)
    return msgspec.json.decode(entry.value, type=ShardMap)


def replica_counts(smap: ShardMap) -> Counter[str]:
    return Counter(n for e in smap.shards for n in e.replicas)


def assert_balanced(smap: ShardMap, nodes: set[str]) -> None:
    counts = replica_counts(smap)
    assert set(counts) == nodes, f"replicas on {set(counts)}, expected {nodes}"
    assert max(counts.values()) - min(counts.values()) <= 1, f"unbalanced: {counts}"
    for e in smap.shards:
        assert len(set(e.replicas)) == len(e.replicas) == min(smap.replication_factor, len(nodes)), e
        assert not e.leaving, e


async def state_with(client: Client, state: str, healthy: int) -> bool:
    info = await client.cluster_info()
    return info.state == state and info.nodes.healthy == healthy


async def green_with(client: Client, healthy: int) -> bool:
    return await state_with(client, "green", healthy)


async def test_three_nodes_reach_green_with_balanced_map_in_kv(cluster: LocalCluster, client: Client) -> None:
    await wait_for(lambda: green_with(client, 3), timeout=30, what="green with 3 nodes")
    smap = await wait_for(
        lambda: _balanced_map(client, {"node-1", "node-2", "node-3"}), timeout=20, what="a settled, balanced map"
    )
    assert smap.num_shards == 8 and smap.replication_factor == 2
    # Nodes learned their assignments: each reports exactly the shards the map gives it. Green does
    # not wait for a node to drop a replica an earlier map gave it, so this may take a moment.
    async def nodes_follow_map() -> bool:
        for node in ("node-1", "node-2", "node-3"):
            info = await client.node_info(node)
            if {r["shard"] for r in info.replicas} != smap.shards_of(node):
                return False
            if any(r["state"] != "active" for r in info.replicas):
                return False
        return True

    await wait_for(nodes_follow_map, timeout=20, what="each node hosting exactly its shards, all active")
    # cluster.shards answers the same map the KV holds.
    assert (await client.cluster_shards()).shards == smap.shards


async def test_sigkill_makes_node_unhealthy_then_replicas_move(cluster: LocalCluster, client: Client) -> None:
    await wait_for(lambda: green_with(client, 3), timeout=30, what="green with 3 nodes")
    cluster.signal_node("node-2", signal.SIGKILL)

    async def node2_unhealthy() -> bool:
        nodes = {n.id: n for n in (await client.cluster_nodes()).nodes}
        info = await client.cluster_info()
        return nodes["node-2"].status in ("unhealthy", "dead") and info.state != "green"

    await wait_for(node2_unhealthy, timeout=10, what="node-2 unhealthy and cluster not green")
    await wait_for(lambda: green_with(client, 2), timeout=20, what="green again on 2 nodes")
    smap = await read_kv_map(client)
    assert "node-2" not in {n for e in smap.shards for n in e.hosts()}
    assert_balanced(smap, {"node-1", "node-3"})
    nodes = {n.id: n for n in (await client.cluster_nodes()).nodes}
    assert nodes["node-2"].status == "dead"


async def test_restarted_node_rejoins_and_gets_replicas_back(cluster: LocalCluster, client: Client) -> None:
    await wait_for(lambda: green_with(client, 3), timeout=30, what="green with 3 nodes")
    before = (await client.node_health("node-3")).incarnation
    cluster.signal_node("node-3", signal.SIGKILL)
    cluster.nodes["node-3"].wait()
    await wait_for(lambda: green_with(client, 2), timeout=20, what="green on 2 nodes after the kill")
    cluster.start_node("node-3")
    await wait_for(lambda: green_with(client, 3), timeout=30, what="green with node-3 back")
    assert (await client.node_health("node-3")).incarnation > before
    smap = await wait_for(
        lambda: _balanced_map(client, {"node-1", "node-2", "node-3"}), timeout=20, what="node-3 rebalanced in"
    )
    assert replica_counts(smap)["node-3"] >= 5


async def _balanced_map(client: Client, nodes: set[str]) -> ShardMap | None:
    smap = await read_kv_map(client)
    try:
        assert_balanced(smap, nodes)
    except AssertionError:
        return None
    return smap


async def test_nodes_started_one_by_one_end_balanced(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(nodes=0)
    cluster.start()
    async with await Client.connect(cluster.url) as client:
        names: set[str] = set()
        for i in range(1, 5):
            name = f"node-{i}"
            cluster.start_node(name)
            names.add(name)
            # One node cannot hold a second copy: yellow (every shard served) is its best.
            want = "green" if len(names) >= 2 else "yellow"
            await wait_for(lambda: state_with(client, want, len(names)), timeout=30, what=f"{want} with {names}")
            await wait_for(lambda: _balanced_map(client, set(names)), timeout=20, what=f"balanced over {names}")
        counts = replica_counts(await read_kv_map(client))
        # 8 shards x 2 replicas over 4 nodes: 4 each. The first node did not keep them all.
        assert counts == {"node-1": 4, "node-2": 4, "node-3": 4, "node-4": 4}


async def test_sigterm_keeps_the_replicas_until_the_reassign_delay(make_cluster) -> None:
    """SIGTERM is a graceful stop, not a decommission: the node is away, as after a failure, and
    its replicas move only once it has been away for TORUA_REASSIGN_DELAY."""
    delay = 4.0
    cluster: LocalCluster = make_cluster(TORUA_REASSIGN_DELAY=str(delay))
    cluster.start()
    async with await Client.connect(cluster.url, request_timeout=5.0) as client:
        await wait_for(lambda: green_with(client, 3), timeout=30, what="green with 3 nodes")
        settled = await wait_for(
            lambda: _balanced_map(client, {"node-1", "node-2", "node-3"}), timeout=20, what="a settled map"
        )
        assigned = settled.shards_of("node-1")
        assert assigned
        signalled = time.monotonic()
        cluster.signal_node("node-1", signal.SIGTERM)
        assert await asyncio.to_thread(cluster.nodes["node-1"].wait, 10) == 0
        # Every map read that returned before the delay had passed since the signal still gives
        # node-1 its replicas (the coordinator counts the delay from the stop it was told of, later).
        observed = 0
        while (smap := await read_kv_map(client)) and time.monotonic() < signalled + delay:
            assert smap.shards_of("node-1") == assigned, f"moved {observed} reads after the stop"
            observed += 1
            await asyncio.sleep(0.1)
        assert observed > 0
        nodes = {n.id: n for n in (await client.cluster_nodes()).nodes}
        assert nodes["node-1"].status in ("unhealthy", "dead")
        # Then, as after a failure: dead, and its replicas placed on the other nodes.
        await wait_for(lambda: green_with(client, 2), timeout=30, what="green on the 2 remaining nodes")
        smap = await wait_for(
            lambda: _balanced_map(client, {"node-2", "node-3"}), timeout=20, what="node-1's replicas moved"
        )
        assert "node-1" not in {n for e in smap.shards for n in e.hosts()}
        assert {n.id: n.status for n in (await client.cluster_nodes()).nodes}["node-1"] == "dead"


async def test_standby_coordinator_takes_over(cluster: LocalCluster, client: Client) -> None:
    await wait_for(lambda: green_with(client, 3), timeout=30, what="green with 3 nodes")
    first = cluster.coordinator
    standby = cluster.start_coordinator("coordinator-2")
    assert (await client.cluster_info()).leader == "coordinator-1"
    first.send_signal(signal.SIGKILL)
    first.wait()

    async def led_by_standby() -> bool:
        info = await client.cluster_info()
        return info.leader == "coordinator-2" and info.state == "green"

    await wait_for(led_by_standby, timeout=20, what="coordinator-2 leading a green cluster")
    # The new leader still detects failures.
    cluster.signal_node("node-1", signal.SIGKILL)
    await wait_for(lambda: green_with(client, 2), timeout=20, what="green on 2 nodes under the new leader")
    assert standby.poll() is None
