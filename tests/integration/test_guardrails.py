"""Query guardrails and backpressure with real processes (nats-server, coordinator, nodes):
memory bombs get a 4xx and every node stays up, a query past TORUA_QUERY_TIMEOUT gets 408 and the
next one answers, writes keep being applied while slow queries run, a full queue answers 503 fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from torua import Client, subjects
from torua.endpoints import error_of
from torua.errors import ToruaError
from torua.model import Chunk, Document, Entity
from torua.up import LocalCluster
from torua_node.router.client import NatsShardClient
from torua_node.shard.protocol import CHUNKS, ShardChunks

from .conftest import running_cluster

pytestmark = pytest.mark.timeout(300)

N_ENTITIES = 2000
TIMEOUT_S = 3  # TORUA_QUERY_TIMEOUT
QUEUE = 1  # TORUA_QUERY_QUEUE: one query runs on a shard, one more may wait
# Every entity against every entity's name, with a costly comparison: a cartesian product over the
# 2,000 entities (one MATCH of one node; the other side is the list of names).
_NAMES = "[" + ",".join(f"'guard entity {i}'" for i in range(N_ENTITIES)) + "]"
CARTESIAN = (f"MATCH (n:Entity) RETURN count(*) AS c, sum(size(list_filter({_NAMES}, "
             "x -> levenshtein(lpad(x, 100, n.name), lpad(n.name, 100, x)) < 2))) AS m")
# One costly string function per row, evaluated in one batch: Kuzu's own timeout does not stop it,
# so the shard's query worker is killed at the deadline.
UNINTERRUPTIBLE = "MATCH (n:Entity) RETURN max(levenshtein(lpad(n.name, 20000, 'a'), lpad(n.id, 20000, 'b'))) AS m"
COUNT = "MATCH (n:Entity) RETURN count(*) AS c"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("guard"), nodes=2, shards=2, replicas=1,
        TORUA_QUERY_TIMEOUT=str(TIMEOUT_S), TORUA_QUERY_QUEUE=str(QUEUE), TORUA_QUERY_MEMORY_MB="1024",
        TORUA_REASSIGN_DELAY="120",
    ) as cluster:
        yield cluster


@pytest.fixture
async def client(guarded: LocalCluster) -> AsyncIterator[Client]:
    async with await Client.connect(guarded.url, request_timeout=30, retries=0) as c:
        await c.wait_for_state("green", timeout=60)
        if (await c.query(COUNT)).rows[0][0] < N_ENTITIES:
            for start in range(0, N_ENTITIES, 500):
                await c.upsert(entities=[Entity(id=f"g{i}", name=f"guard entity {i}", type="probe")
                                         for i in range(start, min(start + 500, N_ENTITIES))])
        yield c


async def ask(c: Client, cypher: str, **extra: Any) -> tuple[int, dict[str, Any], float]:
    """(status, body, seconds): 200 and the reply, or the error code and the error body."""
    started = time.monotonic()
    msg = await c.nc.request(subjects.GRAPH_QUERY, msgspec.json.encode({"cypher": cypher, **extra}), timeout=60)
    took = time.monotonic() - started
    err = error_of(msg.headers, msg.data)
    if err is not None:
        return err.code, msgspec.json.decode(msg.data)["error"], took
    return 200, msgspec.json.decode(msg.data), took


async def assert_healthy(cluster: LocalCluster, c: Client) -> None:
    assert cluster.exited() == [], f"nodes exited: {cluster.exited()}"
    info = await c.wait_for_state("green", timeout=15)
    assert info.state == "green"
    code, body, _ = await ask(c, COUNT)
    assert code == 200 and body["rows"] == [[N_ENTITIES]] and body["partial"] is False, body


@pytest.mark.parametrize("cypher", [
    "MATCH (n:Entity) RETURN size(lpad('x', 500000000, 'y')) AS x LIMIT 1",
    "MATCH (n:Entity) RETURN size(range(0, 200000000)) AS x LIMIT 1",
    "MATCH (n:Entity) RETURN size(repeat('ab', $n)) AS x LIMIT 1",
    # Sizes from the data: not caught before running, but by the worker's memory limit.
    "MATCH (n:Entity) RETURN size(range(0, size(n.name) * 20000000)) AS x LIMIT 1",
    "MATCH (n:Entity) RETURN size(lpad(n.name, size(n.name) * 100000000, 'y')) AS x LIMIT 1",
])
async def test_memory_bombs_get_4xx_and_every_node_stays_up(guarded: LocalCluster, client: Client, cypher: str) -> None:
    code, body, took = await ask(client, cypher, params={"n": 10**9} if "$n" in cypher else {})
    if "n.name" in cypher:
        # From the data: refused when an allocation fails (413), or cancelled at the time limit first.
        assert code in (408, 413), body
        assert took < TIMEOUT_S + 3, took
    else:
        # From constants: refused before running.
        assert code == 413, body
        assert took < 1.0, took
    assert "TORUA_QUERY_" in body["description"], body
    await assert_healthy(guarded, client)


async def test_a_cartesian_product_past_the_time_limit_gets_408_and_the_next_query_answers(
    guarded: LocalCluster, client: Client
) -> None:
    code, body, took = await ask(client, CARTESIAN)
    assert code == 408, body
    assert f"{TIMEOUT_S}s" in body["description"], body
    assert took < TIMEOUT_S + 3, took
    await assert_healthy(guarded, client)


async def test_a_query_the_engine_cannot_interrupt_is_killed_at_its_deadline(guarded: LocalCluster, client: Client) -> None:
    code, body, took = await ask(client, UNINTERRUPTIBLE, timeout_ms=1500)
    assert code == 408, body
    assert "1.5s" in body["description"], body
    assert took < 1.5 + 3, took
    await assert_healthy(guarded, client)


async def test_timeout_ms_only_lowers_the_limit(client: Client) -> None:
    code, body, took = await ask(client, UNINTERRUPTIBLE, timeout_ms=60_000)
    assert code == 408 and f"{TIMEOUT_S}s" in body["description"], body
    assert took < TIMEOUT_S + 3
    code, body, _ = await ask(client, COUNT, timeout_ms=0)
    assert code == 400 and "timeout_ms" in body["description"], body


async def test_writes_are_applied_while_a_slow_query_runs(client: Client) -> None:
    slow = asyncio.create_task(ask(client, UNINTERRUPTIBLE))
    try:
        await asyncio.sleep(0.3)  # let it start on the shards
        for i in range(3):
            reply = await client.upsert(entities=[Entity(id=f"w{i}", name=f"written during a slow query {i}")])
            got = await asyncio.wait_for(client.get(f"w{i}", after=reply.tokens), 2.0)  # strong, and after the write
            assert got.entity.name == f"written during a slow query {i}"
        assert not slow.done(), "the slow query ended before the writes were read back"
    finally:
        code, body, _ = await slow
        await client.delete(entities=[f"w{i}" for i in range(3)])
    assert code == 408, body


async def test_overload_gets_503_quickly_with_a_retry_hint(guarded: LocalCluster, client: Client) -> None:
    # Each shard runs one query and queues QUEUE more; the rest are refused at once.
    n = 6
    started = time.monotonic()
    results = await asyncio.gather(*(ask(client, UNINTERRUPTIBLE, timeout_ms=2500) for _ in range(n)))
    refused = [(body, took) for code, body, took in results if code == 503]
    assert len(refused) >= n - 2 * (QUEUE + 1) + 1, results
    for body, took in refused:
        assert took < 1.0, took
        assert body.get("retry_after_ms", 0) > 0, body
        assert "TORUA_QUERY_QUEUE" in body["description"], body
    assert all(code in (408, 503) for code, _, _ in results), results
    assert time.monotonic() - started < 10
    await assert_healthy(guarded, client)


async def test_shard_rows_larger_than_a_message_are_paged_not_dropped(client: Client) -> None:
    # Grouped by id with a DISTINCT aggregate: each shard sends every group with its distinct values
    # (about 10 MB per shard, more than NATS's 8 MiB max_payload); the merged answer is small.
    cypher = ("MATCH (n:Entity) WHERE n.type = 'probe' RETURN n.id AS id, count(DISTINCT lpad(n.name, 10000, 'x')) AS c "
              "ORDER BY id LIMIT 3")
    code, body, _ = await ask(client, cypher, timeout_ms=20_000)
    assert code == 200, body
    assert body["rows"] == [["g0", 1], ["g1", 1], ["g10", 1]] and body["partial"] is False, body


async def test_an_answer_larger_than_a_message_is_refused_with_413_naming_the_limit(client: Client) -> None:
    code, body, _ = await ask(client, "MATCH (n:Entity) RETURN n.id, lpad(n.name, 10000, 'x') AS padded",
                              timeout_ms=20_000)
    assert code == 413, body
    assert "max_payload" in body["description"], body


async def test_a_chunks_reply_larger_than_a_message_arrives_whole(client: Client) -> None:
    # One document's chunks live on one shard: 12 chunks of 900 kB are about 10.8 MB in one reply.
    texts = [(f"chunk {k} " + "lorem ipsum dolor sit amet " * 40_000)[:900_000] for k in range(12)]
    smap = await client.cluster_shards()
    dim = (await client.cluster_info()).embedding_dim
    for start in (0, 6):
        await client.upsert(documents=[Document(id="big-doc")],
                            chunks=[Chunk(id=f"big-doc#{k}", document_id="big-doc", text=texts[k], embedding=[0.5] * dim)
                                    for k in range(start, start + 6)])
    shards = NatsShardClient(client.nc, lambda: smap)
    shard = shards.owner("big-doc")
    reply = await shards.call(shard, CHUNKS, ShardChunks(ids=[f"big-doc#{k}" for k in range(12)]), timeout=30)
    assert sorted((c.id, c.text) for c in reply.chunks) == sorted((f"big-doc#{k}", t) for k, t in enumerate(texts))


async def test_the_client_maps_the_new_codes(client: Client) -> None:
    with pytest.raises(ToruaError) as err:
        await client.query("MATCH (n:Entity) RETURN size(range(0, 200000000)) AS x")
    assert err.value.code == 413


def test_limits_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "queries.md").read_text()
    for name in ("TORUA_QUERY_TIMEOUT", "TORUA_QUERY_QUEUE", "TORUA_QUERY_MEMORY_MB", "TORUA_QUERY_MAX_VALUE",
                 "TORUA_QUERY_MAX_ROWS", "TORUA_QUERY_MAX_RESULT_MB", "TORUA_QUERY_CONCURRENCY", "timeout_ms",
                 "retry_after_ms", "408", "413", "503"):
        assert name in doc, name
