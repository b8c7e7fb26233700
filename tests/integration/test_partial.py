"""With every replica of one shard gone, fan-out reads answer in time with `partial: true`."""

from __future__ import annotations

import asyncio
import itertools
import signal

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from tests.conftest import wait_for
from torua import Client, subjects
from torua.hashing import shard_for
from torua.model import Entity, Relation
from torua.up import LocalCluster

pytestmark = pytest.mark.timeout(120)

DEADLINE_S = 15.0  # the router's per-shard deadline (5 s) plus one retry, with room to spare


async def test_reads_are_partial_not_silent_when_a_shard_is_down(make_cluster) -> None:
    # One copy per shard and a long reassign delay: killing a node leaves its shards with no replica.
    cluster: LocalCluster = make_cluster(nodes=3, shards=4, replicas=1, TORUA_REASSIGN_DELAY="120")
    cluster.start()
    async with await Client.connect(cluster.url, request_timeout=30, retries=0) as client:
        await client.wait_for_state("green", timeout=30)
        ids = [f"p{i}" for i in range(40)]
        reply = await client.upsert(
            entities=[Entity(id=i, name=f"partial probe {i}") for i in ids],
            relations=[Relation(source=a, target=b) for a, b in itertools.pairwise(ids)],
        )
        smap = await client.cluster_shards()
        victim_shard = shard_for("p0", smap.num_shards)
        victim = smap.shards[victim_shard].replicas[0]
        cluster.signal_node(victim, signal.SIGKILL)
        cluster.nodes[victim].wait()
        down = {e.id for e in smap.shards if victim in e.replicas}

        async def victim_gone() -> bool:
            # The server drops a killed client's subscriptions when it reads the closed socket, which
            # can trail the process's exit on a loaded machine; until then a request routed to the
            # dead node's router is lost, which is not what this test measures.
            try:
                await client.nc.request(subjects.shard_endpoint(victim_shard, "get"), b"{}", timeout=0.5)
            except NoRespondersError:
                return True
            except NatsTimeout:
                return False
            return False

        await wait_for(victim_gone, timeout=15, what=f"the server to drop node {victim}'s subscriptions")

        async def check(call) -> None:
            result = await asyncio.wait_for(call, DEADLINE_S)
            assert result.partial
            failed = {int(s) for s, st in result.shards.items() if not st.ok}
            assert failed and failed <= down

        # Every reply waits for the write tokens of the live shards only.
        live_tokens = {s: seq for s, seq in reply.tokens.items() if int(s) not in down}
        await check(client.search_text("partial probe", k=5, target="entities", after=live_tokens))
        await check(client.search_vector(text="partial probe", k=5, target="entities", after=live_tokens))
        await check(client.neighbors(["p0", "p1", "p2"], hops=2, after=live_tokens))
        await check(client.retrieve("partial probe p1", after=live_tokens))
        await check(client.query("MATCH (e:Entity) RETURN count(*)", after=live_tokens))
