"""Copies that converge (DESIGN §3): a relation is stored twice, with its source (out-edge) and with its
target (in-edge), on two shards whose logs order concurrent writes differently. Every write carries
one version from the router, each copy applies last-writer-wins by it, and deletes are versioned
tombstones, so after concurrent writers stop both ends report the same edge, or both none.

Real nats-server, coordinator and nodes; R=2 (the module's shared cluster: 2 nodes, 4 shards)."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from tests.conftest import wait_for
from torua import Client
from torua.embedding import HashEmbedder
from torua.errors import Overloaded
from torua.hashing import shard_for
from torua.hlc import HybridClock
from torua.model import DeleteRequest, EdgeOut, Relation, RelationKey, UpsertRequest
from torua.subjects import WAL_STREAM, wal_subject
from torua.up import LocalCluster
from torua_node.router.split import split_delete, split_upsert
from torua_node.shard.wal import WalEntry, encode_entry

RelKey = tuple[str, str, str]  # source, type, target

pytestmark = pytest.mark.timeout(240)

# The done-when of issue 12 says 15 s; shorter only if the suite's budget ever needs it.
WRITE_SECONDS = float(os.environ.get("TORUA_CONVERGENCE_SECONDS", "15"))
RELATIONS = 20
# Applying can trail the writers (each delete of a fresh edge checkpoints first, a kuzu workaround):
# how long strong reads may keep answering "not caught up yet" once the writers stopped.
CATCH_UP_S = 120.0


@pytest.fixture
async def writers(shared_cluster: LocalCluster) -> AsyncIterator[tuple[Client, Client]]:
    a = await Client.connect(shared_cluster.url, request_timeout=10.0)
    b = await Client.connect(shared_cluster.url, request_timeout=10.0)
    await a.wait_for_state("green", timeout=60)
    yield a, b
    await a.close()
    await b.close()


def relations_across_shards(num_shards: int, n: int, prefix: str) -> list[RelationKey]:
    """`n` relations whose two ends live on different shards (so each has two copies)."""
    out: list[RelationKey] = []
    i = 0
    while len(out) < n:
        s, t = f"{prefix}-src-{i}", f"{prefix}-dst-{i}"
        if shard_for(s, num_shards) != shard_for(t, num_shards):
            out.append(RelationKey(source=s, target=t, type="LINKS" if i % 2 else "CITES"))
        i += 1
    return out


async def both_ends(client: Client, key: RelationKey) -> tuple[list[EdgeOut], list[EdgeOut]]:
    """The relation as its source's shard reports it (out-edge) and as its target's (in-edge)."""

    async def read() -> tuple[list[EdgeOut], list[EdgeOut]] | None:
        out = await client.neighbors([key.source], direction="out", types=[key.type])
        inc = await client.neighbors([key.target], direction="in", types=[key.type])
        if out.partial or inc.partial:  # a replica still applying answers "retry", never stale data
            return None
        return [e for e in out.edges if e.target == key.target], [e for e in inc.edges if e.source == key.source]

    return await wait_for(read, timeout=CATCH_UP_S, what=f"both ends of {key} to answer", interval=0.1)


def view(edges: list[EdgeOut]) -> list[tuple[Any, ...]]:
    return [(e.source, e.target, e.type, e.weight, msgspec.json.encode(e.properties, order="sorted"))
            for e in edges]


class SlowLinkRouter:
    """A router's write path — the router's own split (`router/split.py`), one version per write from
    its own hybrid clock, its message ids — on its own NATS connection, whose writes reach the log one
    shard at a time in the order `shards`, each entry published once the previous one is stored (a
    router on a slow link). Two of them writing at once put their entries in two shards' logs in
    opposite orders. The cluster's routers publish a write's entries in one burst, which a single
    nats-server stores contiguously: writes made through them alone did not interleave across
    shards here (0 of 3,460 relation races, by the writes' tokens), so they cannot show whether the
    copies order writes by version."""

    def __init__(self, nc: NATS, num_shards: int, dim: int, shards: list[int]) -> None:
        self.js = nc.jetstream()
        self.num_shards = num_shards
        self.embedder = HashEmbedder(dim)
        self.clock = HybridClock()
        self.shards = shards

    async def _publish(self, entries: dict[int, WalEntry], request_id: str) -> None:
        for shard in sorted(entries, key=self.shards.index):
            await self.js.publish(wal_subject(shard), encode_entry(entries[shard]), stream=WAL_STREAM,
                                  headers={"Nats-Msg-Id": f"{request_id}:{shard}"}, timeout=10)

    async def upsert(self, relations: list[Relation]) -> None:
        rid = uuid.uuid4().hex
        await self._publish(split_upsert(UpsertRequest(relations=relations), self.num_shards, self.embedder, rid,
                                         time.time(), self.clock.now()), rid)

    async def delete_relations(self, keys: list[RelationKey]) -> None:
        rid = uuid.uuid4().hex
        await self._publish(split_delete(DeleteRequest(relations=keys), self.num_shards, rid, time.time(),
                                         self.clock.now()), rid)


async def copies(reader: Client, keys: list[RelationKey]) -> tuple[dict[RelKey, Any], dict[RelKey, Any]]:
    """Every relation among `keys` as the sources' shards hold it (out-edges) and as the targets'
    shards hold it (in-edges): two strong reads, each asking every shard for its own copies."""
    wanted = {(k.source, k.type, k.target) for k in keys}

    def held(edges: list[EdgeOut]) -> dict[RelKey, Any]:
        mine = [e for e in edges if (e.source, e.type, e.target) in wanted]
        found = {(e.source, e.type, e.target): view([e])[0] for e in mine}
        assert len(found) == len(mine), f"a relation held twice at one end: {mine}"
        return found

    async def read() -> tuple[dict[RelKey, Any], dict[RelKey, Any]] | None:
        out, inc = await asyncio.gather(
            reader.neighbors(list(dict.fromkeys(k.source for k in keys)), direction="out"),
            reader.neighbors(list(dict.fromkeys(k.target for k in keys)), direction="in"),
        )
        if out.partial or inc.partial:  # a replica still applying answers "retry", never stale data
            return None
        return held(out.edges), held(inc.edges)

    return await wait_for(read, timeout=CATCH_UP_S, what="both ends of every relation to answer", interval=0.1)


async def replica_digests_equal(client: Client) -> None:
    """Every replica of every shard, once all have applied the whole log, holds the same content."""
    ends = await client.latest_tokens()
    for entry in (await client.cluster_shards()).shards:
        end = ends.get(str(entry.id), 0)

        async def at_end(holders: list[str] = entry.replicas, shard: int = entry.id, end: int = end) -> list[Any]:
            got = [await client.node_digest(n, shard) for n in holders]
            return got if all(d.applied_seq >= end for d in got) else []

        got = await wait_for(at_end, timeout=CATCH_UP_S, what=f"shard {entry.id}'s replicas at {end}")
        assert len(got) == 2 and len({(d.applied_seq, d.digest) for d in got}) == 1, (entry.id, got)


async def test_two_writers_updating_and_deleting_the_same_relations_leave_equal_copies(
    writers: tuple[Client, Client], shared_cluster: LocalCluster
) -> None:
    """Rounds for WRITE_SECONDS. In each, two writers on two connections, each with its own router
    (a SlowLinkRouter: one low shards first, the other high shards first) and through the cluster's
    routers, write at once: upserts and deletes of most of the same 20 relations, each with its ends
    on two shards. Once all are acknowledged, the two copies of every relation must hold the same
    edge, or none. The racing writes reach most pairs of shards in opposite orders, so the copies
    agree only if both apply by version. Checked after every round, not only at the end: a later
    round's write to a relation would repair what an earlier one left different. Then every
    replica of a shard must hold the same content."""
    a, b = writers
    info = await a.cluster_info()
    assert info.shards.replication_factor == 2
    num_shards = info.shards.total
    keys = relations_across_shards(num_shards, RELATIONS, "conv")
    up = list(range(num_shards))
    slow = [SlowLinkRouter(c.nc, num_shards, info.embedding_dim, order) for c, order in ((a, up), (b, up[::-1]))]
    rnd = random.Random(12)
    done = {"rounds": 0, "upserts": 0, "deletes": 0, "refused": 0, "present": 0}
    differ: list[tuple[int, RelKey, Any, Any]] = []

    async def write(writer: Client | SlowLinkRouter, w: int, n: int, picked: list[RelationKey]) -> None:
        try:
            if rnd.random() < 0.35:
                await writer.delete_relations(picked)
                done["deletes"] += 1
            else:
                # Each write's values are its own, so a copy holding another write's shows.
                await writer.upsert(relations=[
                    Relation(source=k.source, target=k.target, type=k.type, weight=float(w * 1_000_000 + n),
                             properties={"writer": w, "n": n})
                    for k in picked])
                done["upserts"] += 1
        except Overloaded as exc:  # replicas lag (write backpressure): refused, nothing stored
            done["refused"] += 1
            await asyncio.sleep((exc.retry_after_ms or 500) / 1000)

    deadline = time.monotonic() + WRITE_SECONDS
    n = 0
    while time.monotonic() < deadline:
        done["rounds"] += 1
        writes = []
        for w, (client, router) in enumerate(zip(writers, slow)):
            n += 2
            writes.append(write(router, w, n, [k for k in keys if rnd.random() < 0.8]))
            writes.append(write(client, w, n + 1, rnd.sample(keys, rnd.choice([1, 2, 5]))))
        await asyncio.gather(*writes)
        # Strong reads: every write acknowledged above is applied wherever they are answered.
        out, inc = await copies(b, keys)
        done["present"] += len(out)
        differ += [(done["rounds"], k, out.get(k), inc.get(k)) for k in sorted(set(out) | set(inc))
                   if out.get(k) != inc.get(k)]
    print(f"convergence: {done} in {WRITE_SECONDS:.0f}s; a relation's copies differed {len(differ)} times")
    assert done["rounds"] >= 5 and done["upserts"] >= 10 and done["deletes"] >= 5, done
    assert differ == [], f"{len(differ)} times a relation's two ends differed after a round: {differ[:5]}"
    # Every replica of a shard the same (the reads above reach one per shard and round).
    await replica_digests_equal(a)


async def test_a_relation_delete_removes_it_at_both_ends(writers: tuple[Client, Client],
                                                         shared_cluster: LocalCluster) -> None:
    client, other = writers
    info = await client.cluster_info()
    keep, gone = relations_across_shards(info.shards.total, 2, "single-del")
    await client.upsert(relations=[Relation(source=k.source, target=k.target, type=k.type, weight=2.5)
                                   for k in (keep, gone)])
    out, inc = await both_ends(other, gone)
    assert len(out) == len(inc) == 1
    reply = await client.delete_relations([gone])
    assert reply.deleted["relations"] == 1
    # Only the two end shards are written.
    assert set(reply.tokens) == {str(shard_for(gone.source, info.shards.total)),
                                 str(shard_for(gone.target, info.shards.total))}
    assert await both_ends(other, gone) == ([], [])  # strong reads: no waiting needed
    out, inc = await both_ends(other, keep)
    assert [e.weight for e in out] == [e.weight for e in inc] == [2.5]
    # Over plain NATS too, as a user types it.
    raw = await other.nc.request("torua.graph.delete", msgspec.json.encode(
        {"relations": [{"source": keep.source, "target": keep.target, "type": keep.type}]}), timeout=10)
    assert msgspec.json.decode(raw.data)["deleted"]["relations"] == 1
    assert await both_ends(other, keep) == ([], [])


@pytest.mark.parametrize(("body", "field"), [
    ({"relations": [{"source": "a", "target": "b"}]}, "type"),
    ({"relations": [{"source": "", "target": "b", "type": "T"}]}, "source"),
    ({"relations": [{"source": "a", "target": "b", "type": "T", "weight": 1}]}, "weight"),
    ({"relations": [{"source": "a", "target": 7, "type": "T"}]}, "target"),
    ({"relations": {"source": "a"}}, "relations"),
    ({"relations": []}, "relations"),
])
async def test_a_bad_relation_delete_is_a_400_naming_the_field(
    writers: tuple[Client, Client], body: dict[str, Any], field: str
) -> None:
    raw = await writers[0].nc.request("torua.graph.delete", msgspec.json.encode(body), timeout=10)
    assert raw.headers and raw.headers.get("Nats-Service-Error-Code") == "400", raw.data
    assert field in msgspec.json.decode(raw.data)["error"]["description"]
