"""Hedged reads (torua.client, `hedge_after`; docs/api.md, "Hedged reads"), against a real
nats-server whose queue groups hold a member that takes requests and never answers — as a hung
router or replica does until the server drops it (10-15 s): a read it was given is asked again
(the queue group picks at random, maybe the same member) until another member answers, or, for a
direct point read, goes to the router; writes are never asked twice, nor are a router's query
parts; hedges keep to their budget."""

from __future__ import annotations

import time

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.unit.test_shard_client import smap
from torua import subjects
from torua.client import Client
from torua.connect import connect
from torua.endpoints import encode
from torua.errors import Unavailable
from torua.hedge import HedgeBudget
from torua.model import EntityOut, GetReply
from torua.natsserver import NatsServer
from torua.shardwire import GET, EntityReply, ShardGet
from torua.wire import ClusterInfo, NodeCounts, ShardCounts
from torua_node.router.client import NatsShardClient
from torua_node.shard.protocol import QUERY, ShardQuery

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 5.0  # the client's request timeout: what a read given to the hung member would wait
HEDGE_S = 0.05
FAST_S = 1.5  # time for 29 hedges: a read the hung member got 30 times in a row is one run in 2**30
READS = 20  # each goes to either member at random: the hung one gets some (all but 2**-20 of runs)


def unbounded(client: Client) -> Client:
    """The client with a budget these tests never exhaust (the budget's own test is below)."""
    client.hedges = HedgeBudget(burst=1e9, tokens=1e9)
    return client


def entity(id_: str) -> EntityOut:
    return EntityOut(id=id_, name="answered", type="", description="", properties={})


class Hung:
    """A member of the queue group on `subject` that takes requests and never answers."""

    def __init__(self) -> None:
        self.given = 0

    @classmethod
    async def on(cls, nc: NATS, subject: str) -> Hung:
        hung = cls()

        async def take(msg: Msg) -> None:
            hung.given += 1

        await nc.subscribe(subject, queue="q", cb=take)
        await nc.flush()
        return hung


class Members:
    """Two members of one queue group on `subject`: one hung (counts what it is given), one answering."""

    def __init__(self, nc: NATS, subject: str, answer: bytes) -> None:
        self.nc, self.subject, self.answer = nc, subject, answer
        self._hung: Hung | None = None
        self.answered = 0

    @property
    def hung(self) -> int:
        return self._hung.given if self._hung is not None else 0

    async def start(self) -> None:
        async def fine(msg: Msg) -> None:
            self.answered += 1
            await msg.respond(self.answer)

        self._hung = await Hung.on(self.nc, self.subject)
        await self.nc.subscribe(self.subject, queue="q", cb=fine)
        await self.nc.flush()


async def test_a_read_given_to_a_hung_router_is_asked_again_and_answered(nats_server: NatsServer, nc: NATS) -> None:
    routers = Members(nc, subjects.GRAPH_GET, encode(GetReply(entity=entity("e1"), shard=0)))
    await routers.start()
    async with unbounded(await Client.connect(nats_server.url, request_timeout=TIMEOUT_S, hedge_after=HEDGE_S,
                                              direct_reads=False)) as client:
        for _ in range(READS):
            started = time.monotonic()
            reply = await client.get("e1")
            assert reply.entity.name == "answered"
            assert time.monotonic() - started < FAST_S
    assert routers.hung >= 1  # the hung member was given reads: each was asked again in time
    # Without hedging, a read the hung member is given waits out the whole timeout.
    async with await Client.connect(nats_server.url, request_timeout=0.5, retries=0, hedge_after=None,
                                    direct_reads=False) as plain:
        hung_before = routers.hung
        with pytest.raises(Unavailable):
            for _ in range(READS):
                await plain.get("e1")
        assert routers.hung == hung_before + 1


async def test_a_direct_read_given_to_a_hung_replica_goes_to_the_router_after_the_hedge_time(
    nats_server: NatsServer, nc: NATS
) -> None:
    """A direct point read is not hedged (a task per read costs ~7% of it): it is given
    `hedge_after` to answer, then the router's path, whose requests are hedged, answers it."""
    info = ClusterInfo(
        cluster_id="c", version="0", state="green", nodes=NodeCounts(total=2, healthy=2),
        shards=ShardCounts(total=1, replication_factor=2, active=1, initializing=0, unassigned=0),
        embedding_dim=4, map_revision=1, uptime_s=1.0,
    )
    routed = 0

    async def cluster_info(msg: Msg) -> None:
        await msg.respond(encode(info))

    async def router(msg: Msg) -> None:
        nonlocal routed
        routed += 1
        await msg.respond(encode(GetReply(entity=entity("e1"), shard=0)))

    await nc.subscribe(subjects.CLUSTER_INFO, cb=cluster_info)
    await nc.subscribe(subjects.GRAPH_GET, queue="routers", cb=router)
    replicas = Members(nc, subjects.shard_endpoint(0, "get"), encode(EntityReply(entity=entity("e1"), applied_seq=1)))
    await replicas.start()
    async with unbounded(await Client.connect(nats_server.url, request_timeout=TIMEOUT_S, hedge_after=HEDGE_S)) as client:
        for _ in range(READS):
            started = time.monotonic()
            reply = await client.get("e1")
            assert (reply.entity.name, reply.shard) == ("answered", 0)
            assert time.monotonic() - started < FAST_S
    # Each read the hung replica was given, and only those, went on to the router.
    assert replicas.hung >= 1 and routed == replicas.hung and replicas.answered + routed == READS


async def test_writes_are_never_asked_twice(nats_server: NatsServer, nc: NATS) -> None:
    hung = await Hung.on(nc, subjects.GRAPH_UPSERT)
    async with await Client.connect(nats_server.url, request_timeout=0.6, retries=0, hedge_after=0.1) as client:
        with pytest.raises(Unavailable):
            await client.upsert(entities=[{"id": "e1", "name": "E"}])
    assert hung.given == 1


async def test_hedges_keep_to_their_budget(nats_server: NatsServer, nc: NATS) -> None:
    """Where nothing answers, hedging cannot help: after the burst, a read earns half a hedge."""
    hung = await Hung.on(nc, subjects.GRAPH_NEIGHBORS)
    async with await Client.connect(nats_server.url, request_timeout=0.5, retries=0, hedge_after=0.05) as client:
        client.hedges = HedgeBudget(share=0.5, burst=2.0, tokens=2.0)
        for _ in range(8):
            with pytest.raises(Unavailable):
                await client.neighbors(["e1"])
        await nc.flush()
    # Hedges in hand as each read starts, its share added (at most 2): 2, 0.5, 1, 0.5, 1, ... — each
    # whole one spent on a request more (time allows ten), so 3, 1, 2, 1, 2, 1, 2, 1 requests.
    assert hung.given == 3 + 1 + 2 + 1 + 2 + 1 + 2 + 1


async def test_a_router_asks_a_shard_again_but_never_a_query_part(nats_server: NatsServer, nc: NATS) -> None:
    replicas = Members(nc, subjects.shard_endpoint(0, "get"), encode(EntityReply(entity=entity("e1"), applied_seq=1)))
    await replicas.start()
    parts = await Hung.on(nc, subjects.shard_endpoint(0, "query"))
    router_nc = await connect(nats_server.url, name="router")
    try:
        router = NatsShardClient(router_nc, lambda: smap(1))
        router.hedge_after, router.hedges = HEDGE_S, HedgeBudget(burst=1e9, tokens=1e9)
        for _ in range(READS):
            started = time.monotonic()
            reply = await router.call(0, GET, ShardGet(id="e1"))
            assert reply.entity.name == "answered"
            assert time.monotonic() - started < FAST_S
        assert replicas.hung >= 1
        with pytest.raises(Unavailable):
            await router.call(0, QUERY, ShardQuery(query="MATCH (n) RETURN n"), timeout=0.5)
        await nc.flush()
        assert parts.given == 2  # the request and its one retry (after no answer), never a hedge
    finally:
        await router_nc.close()
