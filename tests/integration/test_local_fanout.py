"""Fan-out rounds to shards served in the router's own process go to the shard endpoint's handler
in-process (`LocalReads.call`, `NatsShardClient.call`): no message on `torua.shard.<n>.<op>`, the
same answers and errors as over NATS; a replica that is not serving, or that answers 503, leaves the
request to the shard's queue group exactly as before.

The rest of a round goes in one message per other node serving several of its shards
(`torua.shard.node.<id>.batch`, `LocalReads.batch`); what that node does not answer goes to the
shards' queue groups.

The first tests run shard replicas' real endpoints (`start_shard_service`) on a real nats-server
over stand-in replicas (real in-memory graph view and text index), and count the messages their
subjects carry; the last two run whole clusters (real coordinator and node processes, Kuzu): one
whose every router serves every shard (graph reads, search and retrieval send no shard request at
all), and one of two nodes with one copy of each shard (a round costs one message to the other node)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.integration.conftest import direct_routed_writer, running_cluster
from tests.integration.test_point_reads import api_stats
from torua import subjects
from torua.endpoints import Endpoint, ServiceHandle, add_endpoints
from torua.errors import BadRequest, InternalError, NotFound, PayloadTooLarge, ResourceLimit, Unavailable
from torua.model import Chunk, Document, Entity, Relation
from torua.natsserver import NatsServer, start_nats_server
from torua.up import LocalCluster
from torua.wire import ShardEntry, ShardMap
from torua_node.node.replicas import LocalReads
from torua_node.router.client import NatsShardClient, Status
from torua_node.shard import protocol as p
from torua_node.shard.api import SHARD_OPS, start_shard_service
from torua_node.storage.graphview import GraphView, entity_row, relation_item
from torua_node.storage.textindex import TextIndex

pytestmark = pytest.mark.timeout(240)

SHARD = 3
DIM = 4


class Replica:
    """What the shard endpoints read of a replica, over a real graph view and text index."""

    def __init__(self, nc: NATS, shard: int = SHARD) -> None:
        self.shard = shard
        self.node_id = "n-test"
        self.nc = nc
        self.dim = DIM
        self.applied_seq = 7
        self.log_id: int | None = 1
        self.state = "active"
        self.graph = GraphView()
        self.graph.apply(
            [("a", entity_row("Alpha", "person", "first", "{}")), ("b", entity_row("Beta", "place", "", "{}"))],
            [],
            [relation_item("a", "KNOWS", "b", 1.0, "{}", ["c1"]), relation_item("a", "LIKES", "z", 0.5, "{}", [])],
            [],
        )
        self.entity_text = TextIndex()
        self.entity_text.upsert([("a", "Alpha first"), ("b", "Beta")])
        self.chunk_text = TextIndex()
        self.chunk_text.upsert([("c1", "Alpha was born in Beta"), ("c2", "nothing here")])
        self.fail_with: BaseException | None = None

    async def wait_applied(self, seq: int) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if seq > self.applied_seq:
            raise Unavailable(f"shard {self.shard} replica on {self.node_id} has applied up to {self.applied_seq}, "
                              f"not yet {seq}; retry")

    async def wait_strong(self, after: int) -> None:
        await self.wait_applied(after)

    async def check_log_id(self, log_id: int) -> None:
        if log_id != self.log_id:
            raise Unavailable("another log")


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats_server(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


class Served:
    """One replica's real shard endpoints; `sent` counts the requests on its subjects."""

    def __init__(self, nc: NATS, replica: Replica, service: ServiceHandle) -> None:
        self.nc, self.replica, self.service = nc, replica, service
        self.sent: list[str] = []
        self.local = LocalReads(SimpleNamespace(replicas={SHARD: replica}, node_id=replica.node_id))  # type: ignore[arg-type]
        self.client = NatsShardClient(nc, lambda: None, timeout=2.0, local=self.local)
        self.remote = NatsShardClient(nc, lambda: None, timeout=2.0)  # today's path: always NATS

    async def fan_out(self, op: p.Op[Any, Any], request: Any, client: NatsShardClient | None = None) -> tuple[Any, Status]:
        status: Status = {}
        replies = await (client or self.client).fan_out(op, {SHARD: request}, status)
        return replies.get(SHARD), status


@pytest.fixture
async def served(nats: NatsServer) -> AsyncIterator[Served]:
    nc = NATS()
    await nc.connect(nats.url)
    replica = Replica(nc)
    service = await start_shard_service(replica)  # type: ignore[arg-type]
    s = Served(nc, replica, service)

    async def count(msg: Msg) -> None:
        s.sent.append(msg.subject)

    await nc.subscribe(f"torua.shard.{SHARD}.>", cb=count)
    await nc.flush()
    try:
        yield s
    finally:
        await service.stop()
        await nc.close()


async def settled(nc: NATS) -> None:
    await nc.flush()
    await asyncio.sleep(0.05)  # the monitor's callbacks for what was sent


def wire(reply: Any) -> Any:
    """A reply as the wire carries it (tuples as lists): what the NATS path's decoded reply equals."""
    return msgspec.json.decode(msgspec.json.encode(reply))


READS: list[tuple[p.Op[Any, Any], Any]] = [
    (p.ENTITIES, p.ShardEntities(ids=["b", "a", "zz"], consistency="eventual")),
    (p.EDGES, p.ShardEdges(ids=["a"], direction="both", consistency="eventual")),
    (p.TEXT_STATS, p.ShardTextStats(terms=["alpha", "beta"], target="chunks", consistency="eventual")),
    (p.TEXT, p.ShardText(idf={"alpha": 1.0, "beta": 0.5}, avg_length=3.0, k=5, target="entities",
                         consistency="eventual")),
    (p.CHUNK_STEMS, p.ShardChunkStems(ids=["c1", "c2"], stems=["alph", "born"], stem_length=4, consistency="eventual")),
    (p.GET, p.ShardGet(id="a", consistency="eventual")),
]


async def test_a_served_shard_is_answered_in_process_with_the_answer_nats_gives(served: Served) -> None:
    for op, request in READS:
        over_nats, status = await served.fan_out(op, request, served.remote)
        assert status[str(SHARD)].ok, (op.name, status)
        await settled(served.nc)
        before = len(served.sent)
        assert before >= 1  # today's path: a message per shard per round

        here, status = await served.fan_out(op, request)
        await settled(served.nc)
        assert len(served.sent) == before, f"{op.name}: sent {served.sent[before:]} for a shard served here"
        assert status[str(SHARD)].ok and status[str(SHARD)].applied_seq == 7
        assert type(here) is op.reply
        assert wire(here) == wire(over_nats), op.name
        assert served.local.counts[op.name, "local"] == 1
    # Every answer is built for its request: changing one leaves the next untouched.
    first, _ = await served.fan_out(p.ENTITIES, p.ShardEntities(ids=["a"], consistency="eventual"))
    first.entities[0].name = "changed"
    first.entities.clear()
    again, _ = await served.fan_out(p.ENTITIES, p.ShardEntities(ids=["a"], consistency="eventual"))
    assert [e.name for e in again.entities] == ["Alpha"]


async def test_a_replica_not_serving_or_not_caught_up_leaves_the_request_to_its_queue_group(served: Served) -> None:
    request = p.ShardEntities(ids=["a"], consistency="eventual")
    served.replica.state = "catching_up"
    reply, status = await served.fan_out(p.ENTITIES, request)
    await settled(served.nc)
    assert status[str(SHARD)].ok and [e.id for e in reply.entities] == ["a"]
    assert served.sent == [f"torua.shard.{SHARD}.entities"]  # answered by the queue group
    assert served.local.counts["entities", "fallback"] == 1 and served.local.counts["entities", "local"] == 0

    # Serving, but not as far as the request asks (503 in-process, the shard's first answer): the
    # queue group is asked once more after a pause, as after a first 503 over NATS (not twice more:
    # a lagging shard would cost three waits), then the shard is marked failed: partial.
    served.replica.state = "active"
    served.sent.clear()
    reply, status = await served.fan_out(p.ENTITIES, p.ShardEntities(ids=["a"], after=8, consistency="eventual"))
    await settled(served.nc)
    assert reply is None and not status[str(SHARD)].ok and "not yet 8" in (status[str(SHARD)].error or "")
    assert served.sent == [f"torua.shard.{SHARD}.entities"]
    assert served.local.counts["entities", "fallback"] == 2


async def test_errors_are_the_types_and_words_the_nats_path_raises(served: Served) -> None:
    cases: list[tuple[p.Op[Any, Any], Any]] = [
        (p.GET, p.ShardGet(id="missing", consistency="eventual")),  # 404
        (p.VECTOR, p.ShardVector(vector=[1.0], k=3, consistency="eventual")),  # 400: wrong dimension
    ]
    for op, request in cases:
        with pytest.raises(Exception) as over_nats:
            await served.remote.call(SHARD, op, request)
        before = len(served.sent)
        with pytest.raises(Exception) as here:
            await served.client.call(SHARD, op, request)
        await settled(served.nc)
        assert len(served.sent) == before  # raised in-process: no message
        assert type(here.value) is type(over_nats.value) and str(here.value) == str(over_nats.value)
    assert isinstance(here.value, BadRequest)

    # A handler's own subclass comes back as the NATS path decodes its code; an unexpected
    # exception as the endpoint's 500.
    served.replica.fail_with = ResourceLimit("too much", limit=1)
    with pytest.raises(PayloadTooLarge) as limit:
        await served.client.call(SHARD, p.ENTITIES, p.ShardEntities(ids=["a"], consistency="eventual"))
    assert type(limit.value) is PayloadTooLarge and str(limit.value) == "too much"
    served.replica.fail_with = KeyError("boom")
    with pytest.raises(InternalError, match=r"internal error \(KeyError\)"):
        await served.client.call(SHARD, p.ENTITIES, p.ShardEntities(ids=["a"], consistency="eventual"))
    served.replica.fail_with = None
    with pytest.raises(NotFound):
        await served.local.call(SHARD, p.GET, p.ShardGet(id="missing", consistency="eventual"))


async def test_a_query_part_goes_to_the_queue_group_even_for_a_shard_served_here(served: Served) -> None:
    # A replica's query queue admits every router's parts in arrival order: over NATS, never in-process.
    assert await served.local.call(SHARD, p.QUERY, p.ShardQuery(query="RETURN 1", consistency="eventual")) is None
    assert served.local.counts == {}


def test_every_shard_operation_has_one_handler_for_its_endpoint_and_in_process_calls() -> None:
    ops = {v.name: v for v in vars(p).values() if isinstance(v, p.Op)}
    assert {s.op.name for s in SHARD_OPS} == set(ops)
    assert len({s.op.name for s in SHARD_OPS}) == len(SHARD_OPS)


# --- a whole cluster whose every router serves every shard -----------------------------------------


SHARD_OPS_NAMES = {s.op.name for s in SHARD_OPS}
IN_PROCESS = {s.op.name for s in SHARD_OPS if s.in_process}


async def test_reads_through_a_router_serving_every_shard_send_no_shard_request(
    shared_cluster: LocalCluster,
) -> None:
    # Two nodes, two replicas of each of four shards: every router serves every shard.
    async with direct_routed_writer(shared_cluster) as (_, routed, writer):
        info = await writer.cluster_info()
        vec = [1.0] + [0.0] * (info.embedding_dim - 1)
        ids = [f"lf-{i}" for i in range(8)]
        await writer.upsert(
            documents=[Document(id="lf-doc", title="fan-out")],
            chunks=[Chunk(id=f"lf-c{i}", document_id="lf-doc", text=f"lf-{i} knows lf-{i + 1} well", position=i,
                          entities=[f"lf-{i}", f"lf-{i + 1}"], embedding=vec) for i in range(7)],
            entities=[Entity(id=i, name=f"name {i}", type="thing", embedding=vec) for i in ids],
            relations=[Relation(source=f"lf-{i}", target=f"lf-{i + 1}", type="KNOWS") for i in range(7)],
        )
        sent: list[str] = []
        queries: list[str] = []

        async def count(msg: Msg) -> None:
            op = msg.subject.split(".")[-1]
            if op in IN_PROCESS:
                sent.append(msg.subject)
            elif op == "query":
                queries.append(msg.subject)

        sub = await routed.nc.subscribe("torua.shard.*.*", cb=count)
        await routed.nc.flush()
        before = await api_stats(routed.nc)

        near = await routed.neighbors(["lf-0"], hops=3, direction="out")
        assert not near.partial
        assert sorted(n.id for n in near.nodes) == ["lf-0", "lf-1", "lf-2", "lf-3"]
        text = await routed.search_text("lf-3 knows", k=3)
        assert not text.partial and text.hits
        found = await routed.search_vector(vector=vec, k=3)
        assert not found.partial and len(found.hits) == 3
        context = await routed.retrieve("Who does lf-2 know?", k=3)
        assert not context.partial and context.chunks
        rows = await routed.query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE a.id = 'lf-1' AND r.type = 'KNOWS' RETURN b.id")
        assert rows.rows == [["lf-2"]]

        await routed.nc.flush()
        await asyncio.sleep(0.2)
        await sub.unsubscribe()
        assert sent == []  # every round answered in-process
        assert queries  # but graph.query's parts over NATS, admitted in arrival order
        after = await api_stats(routed.nc)

    def local(stats: list[dict[str, Any]], op: str) -> int:
        return sum(int(sample["value"]) for s in stats for e in s["endpoints"] if e["name"] == "get"
                   for sample in e["data"].get("torua_local_point_reads", [])
                   if sample["op"] == op and sample["outcome"] == "local")

    for op in ("edges", "entities", "text_stats", "text", "vector", "mentions", "chunks"):
        assert local(after, op) > local(before, op), op


# --- one message per node for the shards of a round it serves ---------------------------------------


def shard_map(placement: dict[int, list[str]]) -> ShardMap:
    return ShardMap(revision=1, num_shards=8, replication_factor=1, embedding_dim=DIM,
                    shards=[ShardEntry(id=s, replicas=nodes, state="active", active=nodes) for s, nodes in placement.items()])


async def test_a_round_sends_one_message_to_a_node_serving_several_of_its_shards(nats: NatsServer) -> None:
    # Node "n-test" serves shards 3 and 5 (their endpoints, and its one-message-per-node endpoint);
    # the router runs on another node, "n-router", which serves none of them.
    nc = NATS()
    await nc.connect(nats.url)
    three, five = Replica(nc, 3), Replica(nc, 5)
    services = [await start_shard_service(r) for r in (three, five)]  # type: ignore[arg-type]
    remote = LocalReads(SimpleNamespace(replicas={3: three, 5: five}, node_id="n-test"))  # type: ignore[arg-type]
    batch = await add_endpoints(nc, name="torua-api", version="1.0.0", description="batch", endpoints=[
        Endpoint("shards_batch", subjects.shard_node("n-test"), remote.batch, p.NodeShards, "", "node-test", True)])
    here = LocalReads(SimpleNamespace(replicas={}, node_id="n-router"))  # type: ignore[arg-type]
    client = NatsShardClient(nc, lambda: shard_map({3: ["n-test"], 5: ["n-test"]}), timeout=2.0, local=here)
    sent: list[str] = []

    async def count(msg: Msg) -> None:
        sent.append(msg.subject)

    await nc.subscribe("torua.shard.>", cb=count)
    await nc.flush()
    try:
        request = p.ShardEntities(ids=["a", "b"], consistency="eventual")
        status: Status = {}
        replies = await client.fan_out(p.ENTITIES, {3: request, 5: request}, status)
        await settled(nc)
        assert sent == [subjects.shard_node("n-test")]  # one message for both shards
        assert {s: [e.id for e in r.entities] for s, r in replies.items()} == {3: ["a", "b"], 5: ["a", "b"]}
        assert all(st.ok and st.applied_seq == 7 for st in status.values()) and len(status) == 2
        assert type(replies[3]) is p.EntitiesReply

        # A replica there not serving: the node leaves its shard, which its queue group answers.
        five.state = "catching_up"
        sent.clear()
        status = {}
        replies = await client.fan_out(p.EDGES, {3: p.ShardEdges(ids=["a"], consistency="eventual"),
                                                 5: p.ShardEdges(ids=["a"], consistency="eventual")}, status)
        await settled(nc)
        assert sent == [subjects.shard_node("n-test"), "torua.shard.5.edges"]
        assert len(replies[3].edges) == len(replies[5].edges) == 2 and not any(not st.ok for st in status.values())

        # A 4xx from one shard is raised, as a shard's own endpoint's would be.
        five.state = "active"
        with pytest.raises(BadRequest, match="embedding_dim"):
            await client.fan_out(p.VECTOR, {3: p.ShardVector(vector=[1.0], k=2, consistency="eventual"),
                                            5: p.ShardVector(vector=[1.0], k=2, consistency="eventual")}, {})

        # Not caught up as far as asked on one shard: a 503 in the node's answer (the shard's first),
        # then once more from its queue group: that shard fails, the other answers.
        sent.clear()
        status = {}
        replies = await client.fan_out(p.ENTITIES, {3: request, 5: p.ShardEntities(ids=["a"], after=9,
                                                                                   consistency="eventual")}, status)
        await settled(nc)
        assert sent == [subjects.shard_node("n-test"), "torua.shard.5.entities"]
        assert list(replies) == [3] and status["3"].ok and not status["5"].ok

        # The node does not answer at all (gone): every shard is asked of its queue group.
        await batch.stop()
        sent.clear()
        replies = await client.fan_out(p.ENTITIES, {3: request, 5: request}, {})
        await settled(nc)
        assert sorted(replies) == [3, 5]
        assert sorted(sent) == sorted([subjects.shard_node("n-test"), "torua.shard.3.entities", "torua.shard.5.entities"])
    finally:
        for service in services:
            await service.stop()
        await nc.close()


async def test_a_node_leaves_what_would_not_fit_in_one_message(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import torua_node.node.replicas as replicas

    monkeypatch.setattr(replicas, "MAX_REPLY_BYTES", 1024 * 2 + 100)  # room for the envelope, not the reply
    raw = msgspec.json.encode(p.ShardEntities(ids=["a", "b"], consistency="eventual"))
    reply = await served.local.batch(p.NodeShards(op="entities", shards={SHARD: msgspec.Raw(raw)}))
    answer = msgspec.json.decode(reply.data, type=p.NodeShardsReply)
    assert answer.left == [SHARD] and not answer.shards
    with pytest.raises(BadRequest, match="unknown shard operation"):
        await served.local.batch(p.NodeShards(op="nope", shards={}))


@pytest.fixture(scope="module")
def one_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes, four shards, one copy each: a router serves half of every round, the other node
    the other half."""
    with running_cluster(tmp_path_factory.mktemp("local-fanout"), nodes=2, shards=4, replicas=1) as cluster:
        yield cluster


async def test_a_round_costs_one_message_per_other_node(one_copy: LocalCluster) -> None:
    async with direct_routed_writer(one_copy) as (_, routed, writer):
        smap = await writer.cluster_shards()
        per_node: dict[str, int] = {}
        for entry in smap.shards:
            for node in entry.replicas:
                per_node[node] = per_node.get(node, 0) + 1
        assert sorted(per_node.values()) == [2, 2], smap
        vec = [1.0] + [0.0] * (smap.embedding_dim - 1)
        words = ["amber", "birch", "cedar", "dune", "elm", "fern", "gale", "heath"]
        await writer.upsert(
            documents=[Document(id=f"oc-doc-{w}") for w in words],
            chunks=[Chunk(id=f"oc-c-{w}", document_id=f"oc-doc-{w}", text=f"the {w} stands near oc-{i}",
                          entities=[f"oc-{i}"], embedding=vec) for i, w in enumerate(words)],
            entities=[Entity(id=f"oc-{i}", name=f"oc {w}", embedding=vec) for i, w in enumerate(words)],
            relations=[Relation(source=f"oc-{i}", target=f"oc-{i + 1}", type="NEXT") for i in range(7)],
        )
        sent: list[str] = []

        async def count(msg: Msg) -> None:
            sent.append(msg.subject)

        sub = await routed.nc.subscribe("torua.shard.>", cb=count)
        await routed.nc.flush()
        text = await routed.search_text("cedar", k=3)
        await routed.nc.flush()
        await asyncio.sleep(0.2)
        assert not text.partial and text.hits[0].id == "oc-c-cedar"
        # Statistics and scoring, each over the four shards: two in-process, two in one message.
        asked = [s for s in sent if not s.endswith(".applied")]
        assert len(asked) == 2 and all(s.startswith("torua.shard.node.") and s.endswith(".batch") for s in asked), sent

        near = await routed.neighbors(["oc-0"], hops=7, direction="out")
        assert not near.partial and sorted(n.id for n in near.nodes) == sorted(f"oc-{i}" for i in range(8))
        context = await routed.retrieve("What stands near oc-3? the cedar", k=3)
        assert not context.partial and context.chunks
        await routed.nc.flush()
        await asyncio.sleep(0.2)
        await sub.unsubscribe()
        batches = [s for s in sent if s.startswith("torua.shard.node.")]
        assert batches, sent  # the rounds that read shards of the other node: one message each
        stats = await api_stats(routed.nc)
        for op in ("text_stats", "text"):  # answered by the other node's replicas for the router
            assert sum(int(x["value"]) for st in stats for e in st["endpoints"] if e["name"] == "get"
                       for x in e["data"].get("torua_local_point_reads", [])
                       if x["op"] == op and x["outcome"] == "node") >= 1, op
