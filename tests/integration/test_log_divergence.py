"""The log's identity and replicas' digests on whole clusters (real nats-server, coordinator and
node processes):

- the WAL stream deleted and created again while clients write: every replica that applied the old
  log stops serving, the cluster turns red naming each shard, and no read answers without a write
  acknowledged in the new log (it gets a retryable error instead); rebuilding the replicas from the
  new log brings back every write acknowledged after the re-creation;
- a replica whose content was changed behind Torua's back: the periodic digest comparison shows
  the mismatch in cluster.info / cluster.health, node.info and metrics; rebuilding it clears it.
"""

from __future__ import annotations

import asyncio
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import signal
import socket
import time
import urllib.request
from dataclasses import dataclass, field

import kuzu
import pytest

from torua import Client
from torua.errors import BadRequest, NotFound, ToruaError, Unavailable
from torua.model import Entity
from torua.streams import ensure_wal_stream
from torua.subjects import WAL_STREAM
from torua.up import LocalCluster
from torua_node.router.split import kv_shard

from tests.conftest import wait_for


@dataclass
class Writes:
    acked: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (value, time the request began)
    failed: int = 0


async def writer(client: Client, wid: int, writes: Writes, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        key, value = f"w{wid}-{n}", f"value {wid} {n}"
        n += 1
        began = time.monotonic()
        try:
            await client.kv_put(key, value)
        except ToruaError:
            writes.failed += 1  # not acknowledged (the log was missing): may or may not be stored
            await asyncio.sleep(0.05)
            continue
        writes.acked[key] = (value, began)


async def read_all(reader: Client, keys: dict[str, tuple[str, float]]) -> dict[str, str]:
    """Each key's read outcome: "ok" (its value), "unavailable" (503), or what went wrong."""
    sem = asyncio.Semaphore(32)

    async def one(key: str, value: str) -> tuple[str, str]:
        async with sem:
            try:
                got = await reader.kv_get(key)
            except Unavailable:
                return key, "unavailable"
            except NotFound:
                return key, "missing"
            return key, "ok" if got == value else f"wrong value {got!r}"

    return dict(await asyncio.gather(*(one(k, v) for k, (v, _) in keys.items())))


async def test_wal_stream_re_created_under_writes_flags_replicas_and_loses_nothing_silently(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(nodes=3, shards=4, replicas=2)
    cluster.start()
    writes, stop = Writes(), asyncio.Event()
    async with await Client.connect(cluster.url, request_timeout=10) as admin, \
            await Client.connect(cluster.url, request_timeout=10) as w1, \
            await Client.connect(cluster.url, request_timeout=10) as w2, \
            await Client.connect(cluster.url, request_timeout=5, retries=0) as reader:
        await admin.wait_for_state("green", timeout=30)
        tasks = [asyncio.create_task(writer(c, i, writes, stop)) for i, c in enumerate((w1, w2))]

        async def every_shard_written() -> bool:
            return {kv_shard(k, 4) for k in writes.acked} == {0, 1, 2, 3} and len(writes.acked) >= 100

        await wait_for(every_shard_written, timeout=30, what="writes on every shard")
        # Delete the log and create it again, as an operator (or a script) might, while writes go on.
        js = admin.nc.jetstream()
        await js.delete_stream(WAL_STREAM)
        await ensure_wal_stream(admin.nc)
        recreated = time.monotonic()

        async def flagged() -> list[str] | None:
            info = await admin.cluster_info()
            named = all(any(p.startswith(f"shard {s}: ") and "stopped serving" in p for p in info.problems)
                        for s in range(4))
            return info.problems if info.state == "red" and named else None

        problems = await wait_for(flagged, timeout=20, what="cluster red, naming every shard")
        assert any("created again" in p for p in problems), problems
        assert (await admin.cluster_health()).state == "red"
        smap = await admin.cluster_shards()

        async def every_replica_stopped() -> bool:
            for entry in smap.shards:
                for node in entry.replicas:
                    replica = next(r for r in (await admin.node_info(node)).replicas if r["shard"] == entry.id)
                    if replica["state"] != "diverged":
                        return False
            return True

        # Each replica checks its log every 2 s (and at once when a strong read finds the log short).
        await wait_for(every_replica_stopped, timeout=10, what="every replica stopped")

        async def written_after() -> bool:
            return sum(began > recreated for _, began in writes.acked.values()) >= 40

        await wait_for(written_after, timeout=30, what="writes acknowledged by the new log")
        stop.set()
        await asyncio.gather(*tasks)
        after = {k: v for k, v in writes.acked.items() if v[1] > recreated}
        print(f"acknowledged {len(writes.acked)} writes ({len(after)} in the new log), {writes.failed} refused")

        # No read answers without an acknowledged write: each gets its value or a retryable error.
        outcomes = await read_all(reader, writes.acked)
        wrong = {k: o for k, o in outcomes.items() if o not in ("ok", "unavailable")}
        assert not wrong, f"{len(wrong)} reads silently missed an acknowledged write: {dict(list(wrong.items())[:5])}"
        assert all(outcomes[k] == "unavailable" for k in after)  # no replica serves the new log yet

        # The operator accepts what the log now holds: rebuild the stopped replicas from it.
        reply = await admin.broadcast("rebuild", {"diverged": True})
        assert all(r.ok for r in reply.results), reply
        assert sorted(s for r in reply.results for s in r.reply["rebuilt"]) == sorted(
            s for e in smap.shards for s in [e.id] * len(e.replicas))
        info = await admin.wait_for_state("green", timeout=60)
        assert info.problems == []
        outcomes = await read_all(reader, after)
        assert set(outcomes.values()) == {"ok"}, {k: o for k, o in outcomes.items() if o != "ok"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_digest_mismatch_shows_in_health_node_info_and_metrics(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(
        nodes=2, shards=2, replicas=2, TORUA_DIGEST_INTERVAL="1", TORUA_REASSIGN_DELAY="120"
    )
    cluster.start()
    async with await Client.connect(cluster.url, request_timeout=10) as client:
        await client.wait_for_state("green", timeout=30)
        await client.upsert(entities=[Entity(id=f"d{i}", name=f"entity {i}") for i in range(20)])
        smap = await client.cluster_shards()

        async def compared(node: str, shard: int, match: bool) -> dict | None:
            replica = next(r for r in (await client.node_info(node)).replicas if r["shard"] == shard)
            check = replica.get("digest")
            return replica if check and check["match"] is match and check["peers"] else None

        for node in ("node-1", "node-2"):
            await wait_for(lambda n=node: compared(n, 0, True), timeout=20, what=f"{node}'s digests compared")
        assert (await client.cluster_info()).state == "green"

        # Change node-2's copy of shard 0 behind Torua's back: same log position, other content.
        cluster.signal_node("node-2", signal.SIGINT)
        assert cluster.nodes["node-2"].wait(timeout=30) == 0
        db = kuzu.Database(str(cluster.opts.data_dir / "node-2" / "shards" / "shard-0000" / "graph.kuzu"),
                           buffer_pool_size=64 << 20, max_db_size=1 << 34)
        conn = kuzu.Connection(db)
        assert conn.execute("MATCH (e:Entity) WHERE NOT e.stub SET e.name = 'tampered' RETURN count(*)").get_all()[0][0] > 0
        conn.close()
        db.close()
        port = _free_port()
        cluster.start_node("node-2", TORUA_METRICS_PORT=str(port))

        async def red() -> list[str] | None:
            info = await client.cluster_info()
            hit = [p for p in info.problems if p.startswith("shard 0: ") and "content differs" in p]
            return hit if info.state == "red" and hit else None

        problems = await wait_for(red, timeout=30, what="the mismatch in cluster.info")
        assert "node-1" in problems[0] and "node-2" in problems[0]
        assert any(p.startswith("shard 0: ") for p in (await client.cluster_health()).problems)
        replica = await wait_for(lambda: compared("node-2", 0, False), timeout=10, what="node-2's node.info")
        assert replica["digest"]["peers"]["node-1"] != replica["digest"]["digest"]
        assert all(r["digest"] is None or r["digest"]["match"] for r in (await client.node_info("node-2")).replicas
                   if r["shard"] == 1)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return resp.read().decode()

        metrics = await asyncio.to_thread(scrape)
        assert 'torua_replica_digest_mismatch{shard="0"} 1.0' in metrics

        # Rebuild the wrong copy from the log: the next comparisons match again.
        with pytest.raises(NotFound, match="7"):
            await client.node_control("node-2", "rebuild", {"shard": 7})
        with pytest.raises(BadRequest, match="diverged"):
            await client.node_control("node-2", "rebuild", {"shard": "0"})
        reply = await client.node_control("node-2", "rebuild", {"shard": 0})
        assert reply == {"rebuilt": [0]}

        async def green() -> bool:
            info = await client.cluster_info()
            return info.state == "green" and not info.problems

        await wait_for(green, timeout=30, what="green after the rebuild")
        got = await client.get("d0")
        assert got.entity.name == "entity 0"
        assert smap.num_shards == 2
