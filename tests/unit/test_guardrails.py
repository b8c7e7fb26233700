"""Query guardrails, the parts without a cluster: the static value-size check, the error codes and
their retry hint, the router's bounded concurrency and time limit over a fake shard client, shard
reply paging, and the shard query worker on a real (small) Kuzu database."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kuzu
import msgspec
import pytest

from torua.endpoints import encode, error_of, error_reply
from torua.errors import (
    BadRequest,
    Overloaded,
    PayloadTooLarge,
    QueryTimeout,
    ResourceLimit,
    Unavailable,
    error_for_code,
)
from torua.model import QueryRequest
from torua.wire import ShardEntry, ShardMap
from torua_node.cypher.guard import check_value_sizes
from torua_node.cypher.lexer import tokenize
from torua_node.cypher.merge import ShardRows
from torua_node.router.client import NatsShardClient
from torua_node.router.query import Queries, QueryGate
from torua_node.settings import NodeSettings, QueryLimits
from torua_node.shard.api import PagedReplies
from torua_node.shard.protocol import (
    PAGED_HEADER,
    QUERY,
    Op,
    QueryRowsReply,
    ShardPage,
    ShardQuery,
    page_subject,
)
from torua_node.shard.worker import ShardQueries, copy_database

# --- the static check ----------------------------------------------------------------------------


@pytest.mark.parametrize("cypher,params", [
    ("MATCH (n:Entity) RETURN size(lpad('x', 500000000, 'y')) AS x LIMIT 1", {}),
    ("MATCH (n:Entity) RETURN size(range(0, 200000000)) AS x LIMIT 1", {}),
    ("RETURN RPAD('x', 1000 * 1000, 'y')", {}),
    ("RETURN range(0, $n)", {"n": 10**9}),
    ("RETURN range(-(5 * 100000), 100)", {}),
    ("RETURN repeat($s, 100)", {"s": "x" * 2000}),
    ("RETURN [x IN range(1, 2000000) | x]", {}),
])
def test_constant_value_bombs_are_refused_with_413(cypher: str, params: dict[str, Any]) -> None:
    with pytest.raises(ResourceLimit) as err:
        check_value_sizes(tokenize(cypher), params, 100_000)
    assert err.value.code == 413 and err.value.limit == 100_000 and err.value.setting == "TORUA_QUERY_MAX_VALUE"
    assert "TORUA_QUERY_MAX_VALUE" in err.value.description


@pytest.mark.parametrize("cypher,params", [
    ("RETURN lpad(n.name, 10, '0'), range(0, 10), range(1, 10**0 + 99999)", {}),
    ("RETURN range(0, size(n.name) * 100000000)", {}),  # from the data: the worker's memory limit
    ("RETURN range(0, 100000000, 1000)", {}),  # 100,001 elements
    ("RETURN n.range(1, 10000000)", {}),  # not the function
    ("RETURN range(0, $n)", {"n": "many"}),
])
def test_small_or_data_dependent_values_pass(cypher: str, params: dict[str, Any]) -> None:
    check_value_sizes(tokenize(cypher), params, 100_001)


# --- errors ----------------------------------------------------------------------------------------


def test_error_codes_and_the_retry_hint_survive_the_wire() -> None:
    body, headers = error_reply(503, "full", retry_after_ms=250)
    detail = error_of(headers, body)
    assert detail is not None and detail.retry_after_ms == 250
    err = error_for_code(detail.code, detail.description, detail.retry_after_ms)
    assert isinstance(err, Overloaded) and isinstance(err, Unavailable) and err.retry_after_ms == 250
    assert type(error_for_code(503, "gone")) is Unavailable
    assert isinstance(error_for_code(408, "slow"), QueryTimeout)
    assert isinstance(ResourceLimit("big"), PayloadTooLarge)
    # No hint: the body keeps its old shape.
    assert b"retry_after_ms" not in error_reply(400, "bad")[0]


def test_limits_come_from_the_settings() -> None:
    s = NodeSettings(query_timeout=3, query_queue=2, query_max_result_mb=5)
    limits = QueryLimits.of(s)
    assert (limits.timeout_s, limits.queue, limits.max_result_bytes) == (3, 2, 5 * 1024 * 1024)


def test_timeout_ms_must_be_positive() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"cypher": "x", "timeout_ms": 0}', type=QueryRequest)


# --- the router: bounded concurrency, time limit, overload, paging ---------------------------------


async def test_the_gate_refuses_at_once_when_full_and_times_out_waiting() -> None:
    gate = QueryGate(concurrency=1, queue=1)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.enter(5):
            inside.set()
            await release.wait()

    first = asyncio.create_task(hold())
    await inside.wait()
    waiting = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(Overloaded) as err:
        async with gate.enter(5):
            pass
    assert time.monotonic() - started < 0.1 and err.value.retry_after_ms and err.value.code == 503
    release.set()
    await asyncio.gather(first, waiting)
    release.clear()
    first = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    with pytest.raises(QueryTimeout):
        async with gate.enter(0.05):
            pass
    release.set()
    await first


class FakeClient:
    """Shard s answers `count(*)` with 1, after `delay[s]`, or raises `fail[s]`; `big[s]`: those rows."""

    def __init__(self, num_shards: int = 2) -> None:
        self.n = num_shards
        self.delay: dict[int, float] = {}
        self.fail: dict[int, Exception] = {}
        self.big: dict[int, list[list[Any]]] = {}
        self.asked: list[tuple[int, str, Any, float | None]] = []

    @property
    def num_shards(self) -> int:
        return self.n

    async def call(self, shard: int, op: Op[Any, Any], request: Any, timeout: float | None = None) -> Any:
        self.asked.append((shard, op.name, request, timeout))
        assert isinstance(request, ShardQuery)
        await asyncio.sleep(self.delay.get(shard, 0))
        if shard in self.fail:
            raise self.fail[shard]
        if shard in self.big:
            return QueryRowsReply(result=ShardRows(["n.id", "__qt0"], ["STRING", "STRING"], self.big[shard]),
                                  applied_seq=1)
        if "count(*)" in request.query:
            return QueryRowsReply(result=ShardRows(["c"], ["INT64"], [[1]]), applied_seq=1)
        return QueryRowsReply(result=ShardRows(["n.id", "__qt0"], ["STRING", "STRING"], []), applied_seq=1)


COUNT = "MATCH (n:Entity) RETURN count(*) AS c"


async def test_shards_get_what_is_left_of_the_time_and_timeout_ms_only_lowers_it() -> None:
    client = FakeClient()
    queries = Queries(client, QueryLimits(timeout_s=3))
    got = await queries.answer(QueryRequest(cypher=COUNT, timeout_ms=1000))
    assert got.rows == [[2]]
    assert all(0 < req.timeout_ms <= 1000 and timeout is not None for _, _, req, timeout in client.asked)
    client.asked.clear()
    await queries.answer(QueryRequest(cypher=COUNT, timeout_ms=60_000))
    assert all(req.timeout_ms <= 3000 for _, _, req, _ in client.asked)


async def test_a_shard_timeout_is_a_408_naming_the_limit() -> None:
    client = FakeClient()
    client.fail[1] = QueryTimeout("the query ran past its time limit of 0.98s on shard 1", timeout_s=0.98)
    with pytest.raises(QueryTimeout) as err:
        await Queries(client, QueryLimits(timeout_s=1)).answer(QueryRequest(cypher=COUNT))
    assert "time limit of 1s" in err.value.description and err.value.timeout_s == 1


async def test_a_shard_that_does_not_answer_in_time_is_a_408_on_the_router() -> None:
    client = FakeClient()
    client.delay[0] = 10
    queries = Queries(client, QueryLimits(timeout_s=0.2))
    import torua_node.router.query as q

    started = time.monotonic()
    old, q.SHARD_MARGIN_S = q.SHARD_MARGIN_S, 0.1
    try:
        with pytest.raises(QueryTimeout):
            await queries.answer(QueryRequest(cypher=COUNT))
    finally:
        q.SHARD_MARGIN_S = old
    assert time.monotonic() - started < 1.0


async def test_a_full_shard_queue_is_a_503_for_the_whole_request() -> None:
    client = FakeClient()
    client.fail[1] = Overloaded("shard 1 has 2 queries running or queued", retry_after_ms=300)
    with pytest.raises(Overloaded) as err:
        await Queries(client, QueryLimits()).answer(QueryRequest(cypher=COUNT))
    assert err.value.retry_after_ms == 300 and "shard 1" in err.value.description


async def test_a_full_shard_queue_is_a_503_at_once_while_other_shards_still_run() -> None:
    # Shard 0 would take the whole time limit: the refusal is not held back until then (nor turned
    # into a 408 by it).
    client = FakeClient()
    client.delay[0] = 30
    client.fail[1] = Overloaded("shard 1 has 2 queries running or queued", retry_after_ms=300)
    started = time.monotonic()
    with pytest.raises(Overloaded) as err:
        await Queries(client, QueryLimits(timeout_s=20)).answer(QueryRequest(cypher=COUNT))
    assert time.monotonic() - started < 1.0
    assert err.value.retry_after_ms == 300 and "shard 1" in err.value.description


async def test_merged_rows_over_the_limit_are_413() -> None:
    client = FakeClient()
    client.big[0] = [["b" * 1000, "b"]]
    with pytest.raises(ResourceLimit) as err:
        await Queries(client, QueryLimits(max_result_bytes=500)).answer(
            QueryRequest(cypher="MATCH (n:Entity) RETURN n.id ORDER BY n.id"))
    assert "TORUA_QUERY_MAX_RESULT_MB" in err.value.description


# --- replies larger than one message: parts ----------------------------------------------------------


def test_a_large_reply_is_split_into_parts_taken_once() -> None:
    paged = PagedReplies()
    data = bytes(range(256)) * 40
    first = paged.split(data, "node-1", part_bytes=1000)
    cursor, node, count = first.headers[PAGED_HEADER].split()
    assert node == "node-1" and int(count) == 11 and first.data == data[:1000]
    rest = [paged.take(cursor, i) for i in range(1, 11)]
    assert first.data + b"".join(rest) == data
    with pytest.raises(Unavailable):
        paged.take(cursor, 1)


@dataclass
class Msg:
    data: bytes
    headers: dict[str, str] | None = None


class PagingNats:
    """A replica that answers with a paged reply, then serves the parts from its page subject."""

    def __init__(self, reply: bytes, part: int) -> None:
        self.paged = PagedReplies()
        self.first = self.paged.split(reply, "node-7", part_bytes=part)
        self.subjects: list[str] = []

    async def request(self, subject: str, data: bytes, timeout: float) -> Msg:
        self.subjects.append(subject)
        if subject.endswith(".query"):
            return Msg(self.first.data, self.first.headers)
        ask = msgspec.json.decode(data, type=ShardPage)
        return Msg(self.paged.take(ask.cursor, ask.part))


async def test_the_router_client_joins_the_parts_of_a_paged_reply() -> None:
    rows = ShardRows(["x"], ["STRING"], [[f"row {i}" * 20] for i in range(500)])
    reply = QueryRowsReply(result=rows, applied_seq=4)
    nc = PagingNats(encode(reply), part=5000)
    smap = ShardMap(revision=1, num_shards=2, replication_factor=1, shards=[ShardEntry(id=s, replicas=["n"]) for s in (0, 1)])
    client = NatsShardClient(nc, lambda: smap)  # type: ignore[arg-type]
    got = await client.call(1, QUERY, ShardQuery(query="MATCH (n:Entity) RETURN n.x"))
    assert got == reply
    assert nc.subjects[0] == "torua.shard.1.query" and len(nc.subjects) > 2
    assert set(nc.subjects[1:]) == {page_subject(1, "node-7")} == {"torua.shard.1.page.node-7"}


# --- the shard query worker, on a real database --------------------------------------------------------


async def test_the_worker_answers_is_killed_at_its_deadline_and_comes_back(tmp_path: Path) -> None:
    src = tmp_path / "shard" / "graph.kuzu"
    src.parent.mkdir()
    db = kuzu.Database(str(src), buffer_pool_size=64 << 20, max_db_size=1 << 30)
    conn = kuzu.Connection(db)
    conn.execute("CREATE NODE TABLE Entity(id STRING, name STRING, PRIMARY KEY(id))")
    conn.execute("UNWIND range(1, 300) AS i CREATE (:Entity {id: 'e' + string(i), name: 'entity ' + string(i)})")
    seq = [1]

    async def snapshot(dest: Path) -> int:
        copy_database(src, dest)
        return seq[0]

    queries = ShardQueries(0, src, snapshot, QueryLimits(queue=0, memory_mb=512))
    queries.start()

    async def run(cypher: str, timeout_s: float = 10.0) -> ShardRows:
        queries.admit()
        try:
            return await queries.run(cypher, {}, seq[0], timeout_s, time.monotonic())
        finally:
            queries.release()

    try:
        assert (await run("MATCH (n:Entity) RETURN count(*)")).rows == [[300]]
        # Kuzu's timeout cannot stop this one: the worker is killed.
        started = time.monotonic()
        with pytest.raises(QueryTimeout):
            await run("MATCH (n:Entity) RETURN max(levenshtein(lpad(n.name, 20000, 'a'), lpad(n.id, 20000, 'b')))", 1.0)
        assert time.monotonic() - started < 3.0 and queries.kills == 1
        # A newer write: the copy is refreshed for the next query.
        conn.execute("CREATE (:Entity {id: 'new', name: 'after the kill'})")
        seq[0] = 2
        assert (await run("MATCH (n:Entity) RETURN count(*)")).rows == [[301]]
        # Built from the data, over the memory limit: 413, the worker stays.
        with pytest.raises(ResourceLimit):
            await run("MATCH (n:Entity) RETURN size(range(0, size(n.name) * 10000000)) AS x")
        assert (await run("MATCH (n:Entity) WHERE n.id = 'new' RETURN n.name")).rows == [["after the kill"]]
        with pytest.raises(BadRequest):
            await run("MATCH (n:Nope) RETURN n")
        # One query at a time and no queue: a second is refused at once.
        queries.admit()
        try:
            with pytest.raises(Overloaded) as err:
                queries.admit()
            assert err.value.retry_after_ms >= 50
        finally:
            queries.release()
    finally:
        await queries.close()
        conn.close()
        db.close()
    assert not (src.parent / "query").exists()
