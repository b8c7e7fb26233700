"""Every admin endpoint: shapes of DESIGN §4, micro discovery, and malformed input.

One 3-node cluster for the module: every test here only reads, or sends requests that must be
refused and change nothing (each checks the cluster still answers, or that nothing changed)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import wait_for
from tests.integration.conftest import running_cluster
from torua import subjects
from torua.client import Client
from torua.errors import BadRequest, NotFound
from torua.up import LocalCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The conftest's `cluster` shape (3 nodes, 8 shards, R=2), started once for this module."""
    with running_cluster(tmp_path_factory.mktemp("admin"), nodes=3, shards=8, replicas=2) as c:
        yield c


CLUSTER = [
    subjects.CLUSTER_HEALTH,
    subjects.CLUSTER_INFO,
    subjects.CLUSTER_NODES,
    subjects.CLUSTER_SHARDS,
    subjects.CLUSTER_BROADCAST,
    subjects.CLUSTER_DRAIN,
    subjects.CLUSTER_SNAPSHOT,
]
NODE = [subjects.node_endpoint("node-1", e) for e in ("health", "info", "control")]

# (payload, words the 400 description must contain)
MALFORMED = [
    (b"{not json", ["JSON"]),
    (b"[1, 2]", ["object"]),
    (b'"text"', ["object"]),
    (b'{"bogus_field": 1}', ["bogus_field"]),
]


async def raw(client: Client, subject: str, payload: bytes) -> tuple[dict[str, str], dict]:
    msg = await client.nc.request(subject, payload, timeout=5)
    return dict(msg.headers or {}), json.loads(msg.data)


async def ready(client: Client) -> bool:
    return (await client.cluster_info()).state == "green"


async def test_shapes(cluster: LocalCluster, client: Client) -> None:
    await wait_for(lambda: ready(client), timeout=30, what="green")
    _, health = await raw(client, subjects.CLUSTER_HEALTH, b"{}")
    assert health == {"status": "ok", "leader": True, "state": "green", "problems": []}
    _, info = await raw(client, subjects.CLUSTER_INFO, b"")
    assert {"cluster_id", "version", "state", "nodes", "shards", "embedding_dim", "map_revision", "uptime_s"} <= set(info)
    assert set(info["shards"]) >= {"total", "replication_factor", "active", "initializing", "unassigned"}
    _, nodes = await raw(client, subjects.CLUSTER_NODES, b"{}")
    for n in nodes["nodes"]:
        assert {"id", "status", "version", "shards", "last_heartbeat", "uptime_s", "capacity", "available_capacity"} <= set(n)
    _, shards = await raw(client, subjects.CLUSTER_SHARDS, b"{}")
    assert {"revision", "num_shards", "replication_factor", "shards"} <= set(shards)
    assert all({"id", "replicas", "state"} <= set(s) for s in shards["shards"])
    _, bc = await raw(client, subjects.CLUSTER_BROADCAST, b'{"op": "ping"}')
    assert bc["sent_to"] == 3
    assert sorted(r["node_id"] for r in bc["results"]) == ["node-1", "node-2", "node-3"]
    assert all(r["ok"] and r["reply"]["pong"] for r in bc["results"])


async def test_broadcast_reports_each_node_error(cluster: LocalCluster, client: Client) -> None:
    await wait_for(lambda: ready(client), timeout=30, what="green")
    reply = await client.broadcast("no_such_op")
    assert reply.sent_to == 3
    for r in reply.results:
        assert not r.ok and r.error is not None and r.error.code == 400
        assert "no_such_op" in r.error.description
    bad = await client.broadcast("set_log_level", {"level": "loud"})
    assert all(r.error and "params.level" in r.error.description for r in bad.results)


@pytest.mark.parametrize("payload,words", MALFORMED)
async def test_malformed_input_gets_400_naming_the_problem(
    cluster: LocalCluster, client: Client, payload: bytes, words: list[str]
) -> None:
    await wait_for(lambda: ready(client), timeout=30, what="green")
    for subject in CLUSTER + NODE:
        headers, body = await raw(client, subject, payload)
        assert headers.get("Nats-Service-Error-Code") == "400", (subject, headers, body)
        desc = body["error"]["description"]
        assert body["error"]["code"] == 400
        assert all(w in desc for w in words), (subject, desc)
        assert "Traceback" not in desc
    # Still answering afterwards.
    assert (await client.cluster_health()).status == "ok"
    assert (await client.node_health("node-1")).status == "ok"


async def test_wrong_types_name_the_field(cluster: LocalCluster, client: Client) -> None:
    await wait_for(lambda: ready(client), timeout=30, what="green")
    cases = [
        (subjects.CLUSTER_BROADCAST, b'{"op": 5}', "$.op"),
        (subjects.CLUSTER_BROADCAST, b'{"op": "ping", "params": []}', "$.params"),
        (subjects.CLUSTER_BROADCAST, b'{"params": {}}', "op"),
        (subjects.node_endpoint("node-2", "control"), b'{"op": "ping", "params": "x"}', "$.params"),
        (subjects.CLUSTER_DRAIN, b'{}', "node"),
        (subjects.CLUSTER_DRAIN, b'{"node": 5}', "$.node"),
        (subjects.CLUSTER_DRAIN, b'{"node": "node 1"}', "$.node"),
        (subjects.CLUSTER_DRAIN, b'{"node": "node-1", "action": "later"}', "$.action"),
    ]
    for subject, payload, field in cases:
        headers, body = await raw(client, subject, payload)
        assert headers.get("Nats-Service-Error-Code") == "400"
        assert field in body["error"]["description"], body
    with pytest.raises(BadRequest, match="unknown op"):
        await client.node_control("node-2", "explode")
    with pytest.raises(NotFound, match="node: 'nobody' is not a member"):
        await client.drain("nobody")
    # Asking changes nothing.
    status = await client.drain_status("node-2")
    assert (status.draining, status.done, status.remaining, status.status) == (False, False, 0, "healthy")


async def test_micro_discovery_lists_endpoints_with_descriptions(cluster: LocalCluster, client: Client) -> None:
    await wait_for(lambda: ready(client), timeout=30, what="green")
    msg = await client.nc.request("$SRV.INFO.torua-coordinator", b"", timeout=5)
    info = json.loads(msg.data)
    assert {e["subject"] for e in info["endpoints"]} == set(CLUSTER)
    assert all(e["metadata"]["description"] for e in info["endpoints"])
    await client.cluster_info()
    stats = json.loads((await client.nc.request("$SRV.STATS.torua-coordinator", b"", timeout=5)).data)
    by_name = {e["name"]: e for e in stats["endpoints"]}
    assert by_name["info"]["num_requests"] >= 1
    assert by_name["info"]["data"]["requests"] >= 1
    # Every node's service answers PING.
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.publish("$SRV.PING.torua-node", b"", reply=inbox)

    async def three_pongs() -> bool:
        return sub.pending_msgs >= 3

    await wait_for(three_pongs, timeout=5, what="3 node PING replies")
    # Unread, the replies would hold the client's drain at teardown for its whole 30 s timeout.
    await sub.unsubscribe()
