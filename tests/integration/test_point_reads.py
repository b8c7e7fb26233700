"""Point reads without the router's hop (issue 14): the Python client asks the owning shard directly
(`Client.get`, `Client.kv_get`) and answers exactly as the router path does; a router whose node
hosts a serving replica of the shard answers from it in-process, still strongly; and under
`--auth` the client role may ask the shards' two point reads, while a role that may not falls back
to the router. Real nats-server, coordinator and node processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.integration.conftest import direct_routed_writer, legacy_admin_cluster
from torua import auth as torua_auth
from torua import subjects
from torua.client import Client
from torua.connect import PermissionDenied
from torua.endpoints import error_of
from torua.errors import BadRequest, NotFound
from torua.model import Entity
from torua.up import LocalCluster

pytestmark = pytest.mark.timeout(240)

NODES = 2


async def api_stats(nc: NATS, nodes: int = NODES) -> list[dict[str, Any]]:
    """`$SRV.STATS.torua-api` of every node (each answers the same request)."""
    replies: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def keep(msg: Msg) -> None:
        replies.append(json.loads(msg.data))
        if len(replies) >= nodes:
            got.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=keep)
    await nc.publish("$SRV.STATS.torua-api", b"", reply=inbox)
    await asyncio.wait_for(got.wait(), 10)
    await sub.unsubscribe()
    return replies


def _endpoint(stats: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in stats["endpoints"] if e["name"] == name)


def router_requests(stats: list[dict[str, Any]], name: str) -> int:
    """Requests the routers' `name` endpoint took, summed over the nodes."""
    return sum(_endpoint(s, name)["num_requests"] for s in stats)


def local_reads(stats: list[dict[str, Any]], op: str, outcome: str = "local") -> int:
    """The routers' point reads answered from their own replicas, summed over the nodes."""
    total = 0
    for s in stats:
        for sample in _endpoint(s, "get")["data"].get("torua_local_point_reads", []):
            if sample["op"] == op and sample["outcome"] == outcome:
                total += int(sample["value"])
    return total


@pytest.fixture
async def clients(shared_cluster: LocalCluster) -> AsyncIterator[tuple[Client, Client, Client]]:
    """Direct reads, reads through the routers, and a writer: three connections."""
    async with direct_routed_writer(shared_cluster) as clients:
        yield clients


async def test_direct_reads_answer_exactly_as_the_router_does(clients: tuple[Client, Client, Client]) -> None:
    direct, routed, writer = clients
    info = await writer.cluster_info()
    vec = [1.0] + [0.0] * (info.embedding_dim - 1)
    ids = [f"pr-{i}" for i in range(12)]
    written = await writer.upsert(
        entities=[Entity(id=i, name=f"name {i}", type="thing", embedding=vec) for i in ids]
    )
    await writer.kv_put("pr-key", "pr-value")

    before = router_requests(await api_stats(direct.nc), "get")
    for i in ids:
        for embedding in (False, True):
            a = await direct.get(i, embedding=embedding, after=written.tokens, consistency="eventual")
            b = await routed.get(i, embedding=embedding, after=written.tokens, consistency="eventual")
            assert a == b, (i, embedding)
            assert (a.entity.embedding is not None) == embedding
            assert a.entity.name == f"name {i}"
    assert await direct.kv_get("pr-key") == await routed.kv_get("pr-key") == "pr-value"
    # The direct reads never went through a router: only the routed client's did.
    assert router_requests(await api_stats(direct.nc), "get") == before + 2 * len(ids)

    for call in ("get", "kv_get"):
        with pytest.raises(NotFound) as via_shard:
            await getattr(direct, call)("pr-missing")
        with pytest.raises(NotFound) as via_router:
            await getattr(routed, call)("pr-missing")
        assert str(via_shard.value) == str(via_router.value)
    # A request the router refuses is the router's refusal, word for word.
    with pytest.raises(BadRequest) as bad_direct:
        await direct.get("")
    with pytest.raises(BadRequest) as bad_routed:
        await routed.get("")
    assert str(bad_direct.value) == str(bad_routed.value)
    assert direct.direct_reads


async def test_direct_reads_are_strong_after_another_connections_write(
    clients: tuple[Client, Client, Client],
) -> None:
    direct, _, writer = clients
    stats = await api_stats(direct.nc)
    before = router_requests(stats, "get") + router_requests(stats, "kv_get")
    for i in range(20):
        await writer.upsert(entities=[Entity(id="pr-strong", name=f"v{i}")])
        assert (await direct.get("pr-strong")).entity.name == f"v{i}"
        await writer.kv_put("pr-strong-key", f"k{i}")
        assert await direct.kv_get("pr-strong-key") == f"k{i}"
    stats = await api_stats(direct.nc)
    assert router_requests(stats, "get") + router_requests(stats, "kv_get") == before


async def test_router_answers_from_its_own_replica_strongly(clients: tuple[Client, Client, Client]) -> None:
    # Two nodes, two replicas of every shard: every router hosts a serving replica of every shard.
    _, routed, writer = clients
    stats = await api_stats(routed.nc)
    got, kv = local_reads(stats, "get"), local_reads(stats, "kv_get")
    for i in range(20):
        await writer.upsert(entities=[Entity(id="pr-local", name=f"v{i}")])
        assert (await routed.get("pr-local")).entity.name == f"v{i}"
        await writer.kv_put("pr-local-key", f"k{i}")
        assert await routed.kv_get("pr-local-key") == f"k{i}"
    with pytest.raises(NotFound):
        await routed.get("pr-local-missing")
    stats = await api_stats(routed.nc)
    assert local_reads(stats, "get") >= got + 21
    assert local_reads(stats, "kv_get") >= kv + 20


# --- under --auth ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with legacy_admin_cluster(tmp_path_factory.mktemp("secure"), shards=2) as cluster:
        yield cluster


async def test_client_role_reads_shards_directly_and_nothing_else(secure: LocalCluster) -> None:
    async with await Client.connect(secure.url, auth=secure.credentials("client")) as client:
        await client.wait_for_state("green", 60)
        written = await client.upsert(entities=[Entity(id="sec-1", name="secure")])
        await client.kv_put("sec-key", "v")
        assert (await client.get("sec-1", after=written.tokens)).entity.name == "secure"
        assert await client.kv_get("sec-key") == "v"
        assert client.direct_reads  # not refused: it stayed on the direct path
        # The two point reads are permitted (a reply comes, here a 404), the shards' other
        # operations are not.
        for op in ("get", "kv_get"):
            body = {"id": "nope"} if op == "get" else {"key": "nope"}
            msg = await client.nc.request(
                subjects.shard_endpoint(0, op), json.dumps(body).encode(), timeout=5
            )
            error = error_of(msg.headers, msg.data)
            assert error is not None and error.code == 404, (op, msg.data)
        for subject in (
            subjects.shard_endpoint(0, "entities"),
            subjects.shard_endpoint(0, "query"),
            "torua.shard.0.page.node-1",
        ):
            with pytest.raises(PermissionDenied):
                await client.nc.request(subject, b"{}", timeout=5)


async def test_a_role_without_the_shard_reads_falls_back_to_the_router(secure: LocalCluster) -> None:
    async with (
        await Client.connect(secure.url, auth=secure.credentials("client")) as writer,
        await Client.connect(secure.url, auth=secure.credentials("admin")) as old,
    ):
        await writer.wait_for_state("green", 60)
        await writer.upsert(entities=[Entity(id="sec-2", name="fallback")])
        await writer.kv_put("sec-key-2", "w")
        assert old.direct_reads
        assert (await old.get("sec-2")).entity.name == "fallback"
        assert not old.direct_reads  # refused once, then straight to the router
        assert await old.kv_get("sec-key-2") == "w"
        with pytest.raises(NotFound):
            await old.get("sec-missing")


def test_the_permissions_add_exactly_the_two_point_reads_and_the_vector_search() -> None:
    for role in ("client", "admin"):
        perms = torua_auth.PERMISSIONS[role]
        assert [s for s in perms.publish_allow if s.startswith("torua.shard.")] == [
            "torua.shard.*.get",
            "torua.shard.*.kv_get",
            "torua.shard.*.vector",  # the client's direct search (tests/integration/test_direct_search.py)
        ]
        # Subscribing to a shard's subjects (answering for it) stays refused.
        assert "torua.shard.>" in perms.subscribe_deny and perms.subscribe_allow == ("_INBOX.>",)
        assert subjects.SHARD_APPLIED_ALL in perms.publish_deny
