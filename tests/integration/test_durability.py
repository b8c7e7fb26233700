"""No acknowledged write is ever lost: writers keep writing while nodes are SIGKILLed and restarted."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
from collections import Counter

import pytest

from torua import Client, ToruaError
from torua.hashing import shard_for
from torua.model import Entity, Relation, Tokens
from torua.subjects import WAL_STREAM, wal_subject
from torua.up import LocalCluster

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(300)


def merge_tokens(into: Tokens, more: Tokens) -> None:
    for shard, seq in more.items():
        into[shard] = max(into.get(shard, 0), seq)


async def log_ends(client: Client, num_shards: int) -> dict[int, int]:
    js = client.nc.jetstream()
    ends = {}
    for s in range(num_shards):
        try:
            ends[s] = (await js.get_last_msg(WAL_STREAM, wal_subject(s))).seq or 0
        except Exception:  # noqa: BLE001 - no entry for this shard yet
            ends[s] = 0
    return ends


async def replicas_converged(client: Client) -> dict[int, set[str]] | None:
    """Every replica of every shard applied the whole log and all report the same digest."""
    smap = await client.cluster_shards()
    ends = await log_ends(client, smap.num_shards)
    digests: dict[int, set[str]] = {}
    for entry in smap.shards:
        if len(entry.active) < smap.replication_factor or entry.leaving:
            return None
        seen = set()
        for node in entry.replicas:
            d = await client.node_digest(node, entry.id)
            if d.applied_seq != ends[entry.id]:
                return None
            seen.add(d.digest)
        digests[entry.id] = seen
    return digests


async def writer(
    client: Client,
    wid: int,
    batches: int,
    acked: set[str],
    attempted: set[str],
    tokens: Tokens,
    until: asyncio.Event | None = None,
) -> None:
    """Write `batches` batches, or keep writing until `until` is set (at most `batches` then)."""
    for b in range(batches):
        if until is not None and until.is_set():
            return
        ids = [f"w{wid}-b{b}-e{j}" for j in range(6)]
        attempted.update(ids)
        rels = [Relation(source=a, target=c, type="NEXT") for a, c in zip(ids, ids[1:])]
        try:
            reply = await client.upsert(entities=[Entity(id=i, name=i.upper()) for i in ids], relations=rels)
        except ToruaError:
            continue  # not acknowledged: may or may not be stored, never half-applied per shard
        acked.update(ids)
        merge_tokens(tokens, reply.tokens)


async def chaos(cluster: LocalCluster, client: Client, rounds: int, done: asyncio.Event) -> None:
    rng = random.Random(7)
    for _ in range(rounds):
        victim = rng.choice(sorted(cluster.nodes))
        cluster.signal_node(victim, signal.SIGKILL)
        cluster.nodes[victim].wait()

        async def noticed() -> bool:
            nodes = {n.id: n.status for n in (await client.cluster_nodes()).nodes}
            return nodes.get(victim) in ("unhealthy", "dead")

        await wait_for(noticed, timeout=15, what=f"{victim} seen down")
        cluster.start_node(victim)
        await wait_for(lambda: _healthy(client, victim), timeout=30, what=f"{victim} back")
    done.set()


async def _healthy(client: Client, node: str) -> bool:
    return any(n.id == node and n.status == "healthy" for n in (await client.cluster_nodes()).nodes)


async def test_no_acknowledged_write_lost_while_nodes_are_killed(cluster: LocalCluster, client: Client) -> None:
    await client.wait_for_state("green", timeout=30)
    acked: set[str] = set()
    attempted: set[str] = set()
    tokens: Tokens = {}
    done = asyncio.Event()
    chaos_task = asyncio.create_task(chaos(cluster, client, rounds=3, done=done))
    writers = [asyncio.create_task(writer(client, w, 5000, acked, attempted, tokens, until=done)) for w in range(3)]
    await asyncio.gather(*writers)
    await chaos_task
    print(f"acknowledged {len(acked)} of {len(attempted)} entities written during 3 kill/restart rounds")
    # A second wave after the last restart, so writes land while replicas catch up too.
    await asyncio.gather(*(writer(client, 10 + w, 5, acked, attempted, tokens) for w in range(3)))

    assert len(acked) >= 0.8 * len(attempted)
    await client.wait_for_state("green", timeout=60)
    digests = await wait_for(lambda: replicas_converged(client), timeout=90, what="replicas converged")
    assert all(len(d) == 1 for d in digests.values()), digests
    for entity_id in sorted(acked):
        got = await client.get(entity_id, after=tokens)
        assert got.entity.name == entity_id.upper()
    # 0 duplicated: each shard holds exactly the distinct ids that were stored, nothing twice.
    smap = await client.cluster_shards()
    stored = Counter()
    for entry in smap.shards:
        info = await client.node_info(entry.replicas[0])
        replica = next(r for r in info.replicas if r["shard"] == entry.id)
        stored[entry.id] = replica["counts"]["entities"]
    expected_max = Counter(shard_for(i, smap.num_shards) for i in attempted)
    expected_min = Counter(shard_for(i, smap.num_shards) for i in acked)
    for s in range(smap.num_shards):
        assert expected_min[s] <= stored[s] <= expected_max[s], (s, stored[s], expected_min[s], expected_max[s])


def corrupt(shards_dir) -> None:
    """Garbage over every database file: what a crash can leave that Kuzu cannot open."""
    for f in shards_dir.rglob("graph.kuzu*"):
        if f.is_file():
            f.write_bytes(b"\x00not a kuzu database\xff" * 64)


@pytest.mark.parametrize("damage", ["wipe", "corrupt"])
async def test_lost_or_corrupt_replica_rebuilds_from_the_log_to_the_same_digest(
    cluster: LocalCluster, client: Client, damage: str
) -> None:
    await client.wait_for_state("green", timeout=30)
    tokens: Tokens = {}
    for b in range(5):
        ids = [f"wipe-{b}-{j}" for j in range(20)]
        reply = await client.upsert(
            entities=[Entity(id=i, name=i, description="x" * b) for i in ids],
            relations=[Relation(source=a, target=c) for a, c in zip(ids, ids[1:])],
        )
        merge_tokens(tokens, reply.tokens)
    before = await wait_for(lambda: replicas_converged(client), timeout=60, what="converged before wipe")
    # Stop node-1 keeping its assignments (SIGINT), wipe or corrupt its databases, start it again.
    cluster.signal_node("node-1", signal.SIGINT)
    assert cluster.nodes["node-1"].wait(timeout=30) == 0
    shards_dir = cluster.opts.data_dir / "node-1" / "shards"
    if damage == "wipe":
        shutil.rmtree(shards_dir)
    else:
        corrupt(shards_dir)
    cluster.start_node("node-1")
    after = await wait_for(lambda: replicas_converged(client), timeout=90, what="converged after rebuild")
    assert after == before
