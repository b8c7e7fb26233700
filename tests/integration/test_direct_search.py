"""`search.vector` without the router's hop: the Python client asks every node for the shards it serves
(`torua.shard.all.vector`), any shard still missing through its queue group, and merges as a router
does (docs/api.md, "Direct vector search"). It answers exactly as the router path does, strongly
(after another connection's write, without tokens), with `after` tokens on eventual reads, partially
when a shard has no replica left, and under `--auth` the client role may send it while a role that
may not falls back to the router. Real nats-server, coordinator and node processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from nats.aio.msg import Msg

from tests.integration.conftest import direct_routed_writer, legacy_admin_cluster, running_cluster
from tests.integration.test_point_reads import api_stats, router_requests
from torua.client import Client
from torua.errors import BadRequest
from torua.model import Entity, SearchReply
from torua.up import LocalCluster

pytestmark = pytest.mark.timeout(240)

NODES = 3


@pytest.fixture(scope="module")
def one_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes, four shards, one copy of each: a node that stops takes its shards' only replica
    with it, and nothing is moved elsewhere while the tests run (a long reassign delay)."""
    with running_cluster(tmp_path_factory.mktemp("direct-search"), nodes=NODES, shards=4, replicas=1,
                         options={"reassign_delay": 600.0}) as cluster:
        yield cluster


@pytest.fixture
async def clients(one_copy: LocalCluster) -> AsyncIterator[tuple[Client, Client, Client]]:
    """Direct search, search through the routers, and a writer: three connections."""
    async with direct_routed_writer(one_copy) as clients:
        yield clients


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> list[list[float]]:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).tolist()


def hosted_requests(stats: list[dict[str, object]]) -> int:
    """Requests the nodes' `torua.shard.all.vector` endpoint took, summed over the nodes."""
    return router_requests(stats, "shards_vector")  # type: ignore[arg-type]


def same_answer(a: SearchReply, b: SearchReply) -> bool:
    """Equal hits and partiality, and the same shards answering (their positions may differ)."""
    return (a.hits, a.partial, {s: st.ok for s, st in a.shards.items()}) == (
        b.hits, b.partial, {s: st.ok for s, st in b.shards.items()})


async def test_direct_search_answers_exactly_as_the_router_does(clients: tuple[Client, Client, Client]) -> None:
    direct, routed, writer = clients
    dim = (await writer.cluster_info()).embedding_dim
    rng = np.random.default_rng(11)
    vectors = unit_rows(rng, 120, dim)
    vectors[7] = vectors[3]  # a tie: ordered by id on every path
    written = await writer.upsert(
        entities=[Entity(id=f"ds-{i:03d}", name=f"n{i}", embedding=v) for i, v in enumerate(vectors)]
    )
    stats = await api_stats(direct.nc, NODES)
    before_router, before_hosted = router_requests(stats, "search_vector"), hosted_requests(stats)
    queries = [*unit_rows(rng, 20, dim), vectors[3]]
    for q in queries:
        for k in (1, 10, 200):
            a = await direct.search_vector(vector=q, k=k, target="entities")
            b = await routed.search_vector(vector=q, k=k, target="entities")
            assert same_answer(a, b), (k, a, b)
            assert not a.partial and set(a.shards) == {"0", "1", "2", "3"}
            assert [h.id for h in a.hits] == [h.id for h in sorted(a.hits, key=lambda h: (-h.score, h.id))]
        # Eventual reads with the write's tokens: the same answer (none from the router's cache here).
        a = await direct.search_vector(vector=q, k=5, target="entities", after=written.tokens, consistency="eventual")
        b = await routed.search_vector(vector=q, k=5, target="entities", after=written.tokens, consistency="eventual")
        assert same_answer(a, b)
    top = await direct.search_vector(vector=vectors[3], k=2, target="entities")
    assert [h.id for h in top.hits] == ["ds-003", "ds-007"]  # the tie, by id
    assert top.hits[0].score == pytest.approx(1.0)

    stats = await api_stats(direct.nc, NODES)
    # The direct searches never went through a router (only the routed client's did), but through
    # every node's endpoint.
    assert router_requests(stats, "search_vector") == before_router + len(queries) * 4
    assert hosted_requests(stats) >= before_hosted + NODES * len(queries) * 4

    # A request the router refuses is the router's refusal, word for word.
    with pytest.raises(BadRequest) as bad_direct:
        await direct.search_vector(vector=[1.0] * (dim + 1), k=3, target="entities")
    with pytest.raises(BadRequest) as bad_routed:
        await routed.search_vector(vector=[1.0] * (dim + 1), k=3, target="entities")
    assert str(bad_direct.value) == str(bad_routed.value)
    assert direct.direct_search


async def test_direct_search_is_strong_after_another_connections_write(clients: tuple[Client, Client, Client]) -> None:
    direct, _, writer = clients
    dim = (await writer.cluster_info()).embedding_dim
    rng = np.random.default_rng(12)
    before = router_requests(await api_stats(direct.nc, NODES), "search_vector")
    for i, v in enumerate(unit_rows(rng, 20, dim)):
        # Another connection's write, acknowledged before the search is sent: found without tokens.
        await writer.upsert(entities=[Entity(id=f"strong-{i}", name="s", embedding=v)])
        reply = await direct.search_vector(vector=v, k=1, target="entities")
        assert [h.id for h in reply.hits] == [f"strong-{i}"] and not reply.partial
        # And gone once deleted.
        await writer.delete(entities=[f"strong-{i}"])
        reply = await direct.search_vector(vector=v, k=1, target="entities")
        assert [h.id for h in reply.hits] != [f"strong-{i}"]
    assert router_requests(await api_stats(direct.nc, NODES), "search_vector") == before


async def test_a_strong_direct_search_looks_at_the_log_once(clients: tuple[Client, Client, Client]) -> None:
    # One node looks at every shard's log (one STREAM.INFO while nothing is written), the others'
    # answers are checked against it: not a look per node, nor two JetStream requests per shard.
    direct, _, writer = clients
    dim = (await writer.cluster_info()).embedding_dim
    rng = np.random.default_rng(16)
    await writer.upsert(entities=[Entity(id=f"once-{i}", name="o", embedding=v) for i, v in enumerate(unit_rows(rng, 20, dim))])
    # The client learns the count; then each node, looking in turn, learns every shard's end since
    # the write (a node's first look after writes asks each shard it had not looked at since).
    for q in unit_rows(rng, 5, dim):
        await direct.search_vector(vector=q, k=5, target="entities")
    seen: list[str] = []

    async def count(msg: Msg) -> None:
        seen.append(msg.subject)

    sub = await writer.nc.subscribe("$JS.API.STREAM.>", cb=count)
    await writer.nc.flush()
    searches = 30
    for q in unit_rows(rng, searches, dim):
        assert not (await direct.search_vector(vector=q, k=5, target="entities")).partial
    await asyncio.sleep(0.2)
    await sub.unsubscribe()
    # Slack for the odd node answer that misses the client's grace on a loaded machine.
    assert len(seen) <= 1.5 * searches, seen


async def test_a_client_whose_shard_count_is_out_of_date_misses_no_shard(clients: tuple[Client, Client, Client]) -> None:
    # As if the cluster had been created again with more shards since the client learnt the count:
    # the node serving shard 3 names it as a shard not asked, and the router answers.
    direct, routed, writer = clients
    dim = (await writer.cluster_info()).embedding_dim
    rng = np.random.default_rng(15)
    vectors = unit_rows(rng, 40, dim)
    await writer.upsert(entities=[Entity(id=f"count-{i}", name="c", embedding=v) for i, v in enumerate(vectors)])
    assert await direct._shards.get() == 4
    direct._shards.value = 3
    direct._shards._learned_at -= 2  # learnt 2 s ago: not asked again in the background for 30 s
    q = vectors[0]
    a = await direct.search_vector(vector=q, k=40, target="entities")
    assert same_answer(a, await routed.search_vector(vector=q, k=40, target="entities"))
    assert "3" in a.shards and any(h.shard == 3 for h in a.hits)
    assert direct._shards.value == 4  # and the count was learnt again


async def test_a_shard_without_a_replica_makes_the_direct_search_partial(
    one_copy: LocalCluster, clients: tuple[Client, Client, Client]
) -> None:
    # Last in this module: it stops a node for good.
    direct, routed, writer = clients
    dim = (await writer.cluster_info()).embedding_dim
    rng = np.random.default_rng(13)
    await writer.upsert(entities=[Entity(id=f"pt-{i}", name="p", embedding=v) for i, v in enumerate(unit_rows(rng, 60, dim))])
    smap = await writer.cluster_shards()
    victim = "node-3"
    lost = {str(s.id) for s in smap.shards if s.replicas == [victim]}
    assert lost, smap
    one_copy.signal_node(victim, signal.SIGKILL)
    one_copy.nodes[victim].wait(10)
    q = unit_rows(rng, 1, dim)[0]
    for _ in range(50):  # until the routers' side of NATS has noticed the node is gone
        a = await direct.search_vector(vector=q, k=10, target="entities")
        if a.partial:
            break
        await asyncio.sleep(0.1)
    b = await routed.search_vector(vector=q, k=10, target="entities")
    assert a.partial and b.partial
    assert {s for s, st in a.shards.items() if not st.ok} == lost == {s for s, st in b.shards.items() if not st.ok}
    assert all("shard" in (a.shards[s].error or "") for s in lost)
    assert same_answer(a, b)
    assert a.hits and all(str(h.shard) not in lost for h in a.hits)
    assert direct.direct_search


# --- under --auth ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with legacy_admin_cluster(tmp_path_factory.mktemp("secure-search"), shards=2) as cluster:
        yield cluster


async def test_the_client_role_searches_directly_and_a_role_that_may_not_through_the_router(
    secure: LocalCluster,
) -> None:
    async with (
        await Client.connect(secure.url, auth=secure.credentials("client")) as client,
        await Client.connect(secure.url, auth=secure.credentials("admin")) as old,
    ):
        await client.wait_for_state("green", 60)
        dim = (await client.cluster_info()).embedding_dim
        vectors = unit_rows(np.random.default_rng(14), 10, dim)
        await client.upsert(entities=[Entity(id=f"sec-{i}", name="s", embedding=v) for i, v in enumerate(vectors)])
        mine = await client.search_vector(vector=vectors[4], k=3, target="entities")
        assert mine.hits[0].id == "sec-4" and client.direct_search  # permitted: it stayed direct
        assert old.direct_search
        theirs = await asyncio.wait_for(old.search_vector(vector=vectors[4], k=3, target="entities"), 4)
        assert not old.direct_search  # refused once (at once, not after a timeout), then the router
        assert same_answer(mine, theirs)
        assert same_answer(mine, await old.search_vector(vector=vectors[4], k=3, target="entities"))
