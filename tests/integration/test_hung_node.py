"""A node that hangs (SIGSTOP: a stuck disk, a paused VM) rather than dies, with real processes.

NATS goes on giving a hung member of a queue group its share of the requests until the server
drops its connection as stale, so until then a third of the routers' requests here wait for a node
that will not answer. With nats-server's defaults (a PING every 2 minutes, 2 unanswered) reads kept
timing out for 8 minutes and more; Torua's NATS configuration (`torua.natsserver`,
deploy/nats/*.conf) pings every 5 s, so the hung node is cut off within seconds
(docs/operations.md, "A hung node")."""

from __future__ import annotations

import signal
import time

import pytest

from torua.client import Client
from torua.up import LocalCluster

from tests.conftest import wait_for
from tests.integration.test_restarts import seed

pytestmark = pytest.mark.timeout(150)

# The server's stale-connection check (a PING every 5 s, 2 unanswered) and a client timeout or two.
RECOVER_WITHIN_S = 30.0
FAST_READ_S = 1.0


async def test_reads_recover_while_a_node_stays_hung_and_it_rejoins_when_resumed(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(nodes=3, shards=4, replicas=2)
    cluster.start()
    client = await Client.connect(cluster.url, request_timeout=2.0)
    try:
        await client.wait_for_state("green", 60)
        ids, neighbours = await seed(client)
        hung = cluster.nodes["node-2"]
        hung.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:

            async def reads_in_a_row_are_fast() -> bool:
                # Each router answers about a third of them: a hung one among them fails the run.
                for entity_id in ids[:20]:
                    started = time.monotonic()
                    reply = await client.neighbors([entity_id], hops=1)  # a timeout raises: not yet
                    if time.monotonic() - started > FAST_READ_S or reply.partial:
                        return False
                    assert neighbours[entity_id] <= {n.id for n in reply.nodes}, reply
                return True

            await wait_for(reads_in_a_row_are_fast, timeout=RECOVER_WITHIN_S, interval=0.0,
                           what=f"20 reads in a row, each under {FAST_READ_S} s, with node-2 hung")
            assert time.monotonic() - stopped < RECOVER_WITHIN_S + 5
        finally:
            hung.send_signal(signal.SIGCONT)

        async def node2_back() -> bool:
            info = await client.cluster_info()
            nodes = {n.id: n.status for n in (await client.cluster_nodes()).nodes}
            return info.state == "green" and nodes.get("node-2") == "healthy"

        # Resumed, it finds its connection closed, reconnects, heartbeats again and is healthy.
        await wait_for(node2_back, timeout=60, what="node-2 healthy again and the cluster green")
        reply = await client.neighbors([ids[0]], hops=1)
        assert not reply.partial and neighbours[ids[0]] <= {n.id for n in reply.nodes}
    finally:
        await client.close()
