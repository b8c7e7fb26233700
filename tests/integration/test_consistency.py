"""Strong reads by default: a read reflects every write acknowledged before it was sent, from any
connection, with no write tokens (DESIGN §3). Two clients on two connections: one writes, the other
reads at once. R=2 across three nodes, so reads land on either replica of a shard.

One cluster for the module: each test writes keys and entities of its own (k*, p*/c*, ev) and
connects two fresh clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest

from tests.conftest import wait_for
from tests.integration.conftest import running_cluster
from torua import Client
from torua.model import Entity, Relation
from torua.up import LocalCluster

pytestmark = pytest.mark.timeout(240)

TRIES = 1000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("consistency"), nodes=3, shards=4, replicas=2) as c:
        yield c


@pytest.fixture
async def pair(cluster: LocalCluster) -> AsyncIterator[tuple[Client, Client]]:
    writer = await Client.connect(cluster.url, request_timeout=10.0)
    reader = await Client.connect(cluster.url, request_timeout=10.0)
    await writer.wait_for_state("green", timeout=60)
    yield writer, reader
    await writer.close()
    await reader.close()


async def test_a_kv_put_is_read_back_from_another_connection_without_tokens(pair: tuple[Client, Client]) -> None:
    writer, reader = pair
    stale = []
    for i in range(TRIES):
        key = f"k{i % 16}"
        await writer.kv_put(key, str(i))
        got = await reader.kv_get(key)  # no `after`: strong by default
        if got != str(i):
            stale.append((i, got))
    assert stale == [], f"{len(stale)} of {TRIES} reads missed the write acknowledged just before"


async def test_an_upsert_is_seen_by_get_and_neighbors_from_another_connection(pair: tuple[Client, Client]) -> None:
    writer, reader = pair
    stale = []
    for i in range(TRIES // 4):
        # The relation lives at both ends: its source's shard and, as the incoming copy, its target's.
        await writer.upsert(
            entities=[Entity(id=f"p{i}", name=f"Person {i}", type="person"),
                      Entity(id=f"c{i}", name=f"City {i}", type="city")],
            relations=[Relation(source=f"p{i}", target=f"c{i}", type="BORN_IN")],
        )
        got = await reader.get(f"p{i}")
        back = await reader.neighbors([f"c{i}"], direction="in")
        if got.entity.name != f"Person {i}" or [e.source for e in back.edges] != [f"p{i}"] or back.partial:
            stale.append(i)
    assert stale == []


async def test_eventual_reads_opt_out_and_a_wrong_level_is_refused(pair: tuple[Client, Client]) -> None:
    writer, reader = pair
    reply = await writer.kv_put("ev", "1")
    # Eventual with the write's token still reads it: `after` keeps working.
    raw = await reader.nc.request(
        "torua.kv.get", msgspec.json.encode({"key": "ev", "consistency": "eventual", "after": reply.token}), timeout=5
    )
    assert msgspec.json.decode(raw.data)["value"] == "1"
    # Eventually, without a token, too.
    async def settled() -> bool:
        raw = await reader.nc.request("torua.kv.get", b'{"key": "ev", "consistency": "eventual"}', timeout=5)
        return b'"value":"1"' in raw.data
    await wait_for(settled, timeout=10, what="an eventual read of the key")
    bad = await reader.nc.request("torua.kv.get", b'{"key": "ev", "consistency": "linearizable"}', timeout=5)
    assert bad.headers and bad.headers.get("Nats-Service-Error-Code") == "400"
    assert "consistency" in msgspec.json.decode(bad.data)["error"]["description"]
