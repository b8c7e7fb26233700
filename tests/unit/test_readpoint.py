"""The router's read point (router/readpoint.py): a strong multi-round read learns each shard's log
end once, after the request arrived, and sends every round of it as "wait for this position"."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from tests.unit.fake_shards import FakeShards
from tests.unit.test_retrieve import CHUNKS, ENTITIES, QUESTION, RELATIONS, Embedding
from torua.errors import Unavailable
from torua.model import Entity, NeighborsReply, NeighborsRequest, Relation, RetrieveRequest, TextSearchRequest
from torua_node.rag.retrieve import Retriever
from torua_node.rag.search import Search
from torua_node.router.api import DataApi
from torua_node.router.cache import ResultCache
from torua_node.router.graph import GraphReads
from torua_node.router.readpoint import LogEnds, pinned, reading
from torua_node.shard import protocol as p
from torua_node.shard.api import ShardApi


class Logs:
    """Every shard's log: its end grows with each write; fetches are counted per shard, and may be
    held until the test releases them."""

    def __init__(self, end: int = 100) -> None:
        self.end: Counter[int] = Counter()
        self.base = end
        self.fetches: Counter[int] = Counter()
        self.hold = False
        self.begun: asyncio.Queue[int] = asyncio.Queue()
        self.gate = asyncio.Semaphore(0)
        self.fail: dict[int, Exception] = {}

    def write(self, shard: int) -> None:
        self.end[shard] += 1

    async def fetch(self, shard: int) -> int:
        self.fetches[shard] += 1
        seen = self.base + self.end[shard]  # the end when the fetch began
        if self.hold:
            self.begun.put_nowait(shard)
            await self.gate.acquire()
        if shard in self.fail:
            raise self.fail[shard]
        return seen


class Ends(LogEnds):
    """LogEnds that tell the test each time a request asks for a shard's log end."""

    def __init__(self, logs: Logs) -> None:
        super().__init__(logs.fetch)
        self.asked: asyncio.Queue[int] = asyncio.Queue()

    def next_end(self, shard: int) -> asyncio.Future[int]:
        self.asked.put_nowait(shard)
        return super().next_end(shard)


def chain_graph(logs: Logs, num_shards: int = 4) -> FakeShards:
    fake = FakeShards(num_shards)
    fake.log_ends = Ends(logs)
    ids = [f"n{i}" for i in range(12)]
    fake.add(
        entities=[Entity(id=i, name=i.upper()) for i in ids],
        relations=[Relation(source=s, target=t, type="next") for s, t in itertools.pairwise(ids)],
    )
    return fake


def data_api(fake: FakeShards) -> DataApi:
    return DataApi(None, fake, GraphReads(fake), Embedding(), ResultCache())  # type: ignore[arg-type]


async def test_a_k_hop_read_fetches_each_shards_log_end_once_not_once_per_round() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    reply = await data_api(fake).neighbors(NeighborsRequest(ids=["n0"], hops=6, direction="out"))
    assert [n.id for n in reply.nodes] == [f"n{i}" for i in range(7)]
    asked = Counter(s for s, _, _ in fake.calls)
    assert max(asked.values()) > 1  # some shard is read in several rounds...
    # ...but its log end is learnt once (every shard's, beside the first round: later rounds read most)
    assert logs.fetches == Counter(dict.fromkeys(range(4), 1))
    assert set(asked) <= set(logs.fetches)
    for shard, _, req in fake.calls:
        # Every round waits for the log end, without the replica fetching it again.
        assert (req.consistency, req.after) == ("eventual", logs.base), (shard, req)


async def test_a_write_token_beyond_the_log_end_is_kept() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    ahead = {"0": logs.base + 50}
    await data_api(fake).neighbors(NeighborsRequest(ids=["n0"], hops=4, direction="out", after=ahead))
    for shard, _, req in fake.calls:
        assert req.after == (logs.base + 50 if shard == 0 else logs.base), (shard, req)


async def test_a_request_never_uses_a_log_end_fetched_before_it_arrived() -> None:
    logs = Logs()
    logs.hold = True
    fake = chain_graph(logs, num_shards=1)
    api = data_api(fake)
    asked = _asked(fake)
    first = asyncio.create_task(api.neighbors(NeighborsRequest(ids=["n0"], hops=1)))
    assert await asyncio.wait_for(logs.begun.get(), 5) == 0  # the first request's fetch is under way
    logs.write(0)  # a write acknowledged before the second request arrives
    second = asyncio.create_task(api.neighbors(NeighborsRequest(ids=["n0"], hops=1)))
    await asyncio.wait_for(asked.get(), 5)  # the first request's
    await asyncio.wait_for(asked.get(), 5)  # the second's, while the first fetch is still under way
    logs.gate.release()
    await asyncio.wait_for(first, 5)
    # The second request waits for a fetch of its own, begun after it arrived: it sees the write.
    assert await asyncio.wait_for(logs.begun.get(), 5) == 0
    logs.gate.release()
    await asyncio.wait_for(second, 5)
    firsts = [req.after for _, _, req in fake.calls[:2]]
    seconds = [req.after for _, _, req in fake.calls[2:]]
    assert firsts == [logs.base] * 2
    assert seconds == [logs.base + 1] * 2
    assert logs.fetches[0] == 2


async def test_a_log_end_learnt_by_an_earlier_request_is_not_reused() -> None:
    logs = Logs()
    fake = chain_graph(logs, num_shards=1)
    api = data_api(fake)
    await api.neighbors(NeighborsRequest(ids=["n0"], hops=1))
    logs.write(0)
    fake.calls.clear()
    await api.neighbors(NeighborsRequest(ids=["n0"], hops=1))
    assert {req.after for _, _, req in fake.calls} == {logs.base + 1}
    assert logs.fetches[0] == 2


async def test_concurrent_requests_share_a_fetch_begun_after_both_arrived() -> None:
    logs = Logs()
    logs.hold = True
    fake = chain_graph(logs, num_shards=1)
    api = data_api(fake)
    both = asyncio.gather(*(api.neighbors(NeighborsRequest(ids=["n0"], hops=1)) for _ in range(2)))
    assert await asyncio.wait_for(logs.begun.get(), 5) == 0
    logs.gate.release()
    await asyncio.wait_for(both, 5)
    assert logs.fetches[0] == 1


async def test_eventual_reads_are_sent_as_they_are() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    await data_api(fake).neighbors(
        NeighborsRequest(ids=["n0"], hops=3, consistency="eventual", after={"1": 7})
    )
    assert not logs.fetches
    assert all(
        req.consistency == "eventual" and req.after == (7 if s == 1 else 0) for s, _, req in fake.calls
    )


async def test_outside_a_read_point_replicas_learn_the_log_end() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    await GraphReads(fake).traverse(["n0"], 3, "out", None, 100, {}, {})
    assert not logs.fetches
    assert all(req.consistency == "strong" for _, _, req in fake.calls)


async def test_a_shard_whose_log_end_cannot_be_learnt_is_partial_and_asked_no_more() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    failing = fake.owner("n2")
    logs.fail[failing] = ConnectionError("no JetStream")
    reply = await data_api(fake).neighbors(NeighborsRequest(ids=["n0"], hops=6, direction="out"))
    assert reply.partial
    assert not reply.shards[str(failing)].ok
    assert "could not learn the end of shard" in (reply.shards[str(failing)].error or "")
    assert not [c for c in fake.calls if c[0] == failing]
    assert logs.fetches[failing] == 2  # learnt beside the first round, tried again when first needed


async def test_bm25s_two_rounds_and_retrieval_learn_each_log_end_once() -> None:
    logs = Logs()
    fake = FakeShards(4)
    fake.log_ends = LogEnds(logs.fetch)
    fake.add(entities=ENTITIES, relations=RELATIONS, chunks=CHUNKS)
    search = Search(fake, Embedding())
    await search.text(TextSearchRequest(text="city founder", k=3))
    assert [op for _, op, _ in fake.calls].count(p.TEXT_STATS.name) == 4
    assert logs.fetches == Counter(dict.fromkeys(range(4), 1))
    logs.fetches.clear()
    fake.calls.clear()
    reply = await Retriever(fake, GraphReads(fake), Embedding()).retrieve(
        RetrieveRequest(question=QUESTION, hops=3)
    )
    assert reply.chunks and not reply.partial
    assert len(fake.calls) > 8  # several rounds over 4 shards...
    assert logs.fetches == Counter(dict.fromkeys(range(4), 1))  # ...one log end each
    assert all(req.consistency == "eventual" and req.after == logs.base for _, _, req in fake.calls)


async def test_a_cancelled_round_does_not_cancel_the_fetch_other_rounds_wait_for() -> None:
    logs = Logs()
    logs.hold = True
    fake = chain_graph(logs, num_shards=1)
    graph = GraphReads(fake)
    with reading(fake.log_ends):
        one = asyncio.create_task(graph.entities(["n0"], {}, {}))
        assert await asyncio.wait_for(logs.begun.get(), 5) == 0
        # Whether the other round asks before or after the first is cancelled, the fetch goes on.
        other = asyncio.create_task(graph.entities(["n1"], {}, {}))
        one.cancel()
        logs.gate.release()
        assert [e.id for e in await asyncio.wait_for(other, 5)] == ["n1"]
    with pytest.raises(asyncio.CancelledError):
        await one
    assert logs.fetches[0] == 1


async def test_a_failed_fetch_is_not_kept_for_the_requests_later_rounds() -> None:
    logs = Logs()
    fake = chain_graph(logs, num_shards=1)
    logs.fail[0] = ConnectionError("no JetStream")
    graph = GraphReads(fake)
    with reading(fake.log_ends):
        with pytest.raises(Unavailable):
            await fake.call(0, p.ENTITIES, await pinned(0, p.ShardEntities(ids=["n0"])))
        del logs.fail[0]
        assert await graph.entities(["n0"], {}, {})
    assert logs.fetches[0] == 2


def _asked(fake: FakeShards) -> asyncio.Queue[int]:
    assert isinstance(fake.log_ends, Ends)
    return fake.log_ends.asked


class IdentifiedEnds(Ends):
    """Ends read from the log with identity 7."""

    def log_id(self, shard: int) -> int | None:
        return 7


async def test_rounds_carry_the_identity_of_the_log_their_end_was_read_from() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    fake.log_ends = IdentifiedEnds(logs)
    await data_api(fake).neighbors(NeighborsRequest(ids=["n0"], hops=3, direction="out"))
    assert fake.calls
    assert all(req.log_id == 7 for _, _, req in fake.calls)


class QuietEnds(IdentifiedEnds):
    """Ends of a log (identity 7 until `moved_to`) that the last look saw quiet: a read point's
    first rounds are sent before their ends are known (`readpoint.early`)."""

    def __init__(self, logs: Logs) -> None:
        super().__init__(logs)
        self.identity = 7
        self.calm = True

    def log_id(self, shard: int) -> int | None:
        return self.identity

    def quiet(self, shard: int) -> bool:
        return self.calm


async def _first_round(logs: Logs, fake: FakeShards, applied: int, ends: QuietEnds | None = None) -> NeighborsReply:
    """A one-hop read over 4 shards whose replicas applied `applied`, its looks held until its first
    round went out; returns the reply once the looks found the end `logs.base`."""
    fake.log_ends = ends or QuietEnds(logs)
    for shard in fake.shards:
        shard.applied_seq = applied
    logs.hold = True
    read = asyncio.create_task(data_api(fake).neighbors(NeighborsRequest(ids=["n0"], hops=1, direction="out")))
    for _ in range(4):
        await asyncio.wait_for(logs.begun.get(), 5)  # every shard's look is out (prefetched)
    for _ in range(100):  # the first round goes out meanwhile, or never
        if fake.calls:
            break
        await asyncio.sleep(0)
    sent_before_the_end = list(fake.calls)
    for _ in range(4):
        logs.gate.release()
    reply = await asyncio.wait_for(read, 5)
    assert sent_before_the_end == fake.calls[: len(sent_before_the_end)]
    return reply


async def test_a_quiet_shards_first_round_goes_before_its_log_end_and_is_kept_at_or_past_it() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    reply = await _first_round(logs, fake, applied=logs.base)
    edges = fake.ops(p.EDGES.name)
    assert edges[0][1].consistency == "eventual" and edges[0][1].after == 0 and edges[0][1].log_id == 7
    assert [n.id for n in reply.nodes] == ["n0", "n1"] and not reply.partial
    # Asked once: the replica had applied the end the look found.
    assert len(edges) == 1


async def test_an_early_answer_behind_the_log_end_is_asked_again_pinned() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    reply = await _first_round(logs, fake, applied=logs.base - 1)
    edges = fake.ops(p.EDGES.name)
    assert [(r.after, r.consistency) for _, r in edges] == [(0, "eventual"), (logs.base, "eventual")]
    assert [n.id for n in reply.nodes] == ["n0", "n1"]


async def test_an_early_answer_from_another_log_is_asked_again_pinned_to_the_looks() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    ends = QuietEnds(logs)
    real_fetch = logs.fetch

    async def recreated(shard: int) -> int:
        end = await real_fetch(shard)
        ends.identity = 8  # the look finds the stream re-created since the last one
        return end

    ends._fetch = recreated
    await _first_round(logs, fake, applied=logs.base + 5, ends=ends)
    edges = fake.ops(p.EDGES.name)
    assert [(r.log_id, r.after) for _, r in edges] == [(7, 0), (8, logs.base)]


async def test_a_shard_the_last_look_saw_written_waits_for_its_end() -> None:
    logs = Logs()
    fake = chain_graph(logs)
    ends = QuietEnds(logs)
    ends.calm = False
    await _first_round(logs, fake, applied=logs.base, ends=ends)
    edges = fake.ops(p.EDGES.name)
    assert [(r.after, r.log_id) for _, r in edges] == [(logs.base, 7)]  # pinned, once


class Replica:
    """The shard API's seam to its replica: records what a read waited for."""

    applied_seq = 10

    def __init__(self) -> None:
        self.checked: list[int] = []
        self.waited: list[tuple[str, int]] = []

    async def wait_applied(self, seq: int) -> None:
        self.waited.append(("applied", seq))

    async def wait_strong(self, after: int) -> None:
        self.waited.append(("strong", after))

    async def check_log_id(self, log_id: int) -> None:
        self.checked.append(log_id)


async def test_a_replica_checks_the_log_identity_a_pinned_round_carries() -> None:
    replica = Replica()
    api = ShardApi(replica)  # type: ignore[arg-type]
    await api._ready(p.ShardEdges(ids=["a"], after=5, consistency="eventual", log_id=42))
    await api._ready(p.ShardEdges(ids=["a"], after=6, consistency="eventual"))
    await api._ready(p.ShardEdges(ids=["a"], after=7))
    assert replica.checked == [42]  # only the round pinned to a log
    assert replica.waited == [("applied", 5), ("applied", 6), ("strong", 7)]
