"""The client's direct point reads against a scripted connection: which shard it asks, when it
falls back to the router, and how it follows a cluster whose shard count is not the one it knew.
(The same against real processes: tests/integration/test_point_reads.py.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from nats.errors import NoRespondersError

from torua import client as client_module
from torua import subjects
from torua.client import Client
from torua.endpoints import encode, error_reply
from torua.errors import NotFound
from torua.hashing import shard_for
from torua.model import EntityOut, GetReply
from torua.shardwire import PAGED_HEADER, EntityReply, KVValueReply, kv_shard
from torua.wire import ClusterInfo, NodeCounts, ShardCounts


def out(id_: str, name: str) -> EntityOut:
    return EntityOut(id=id_, name=name, type="", description="", properties={})


@dataclass
class Msg:
    data: bytes
    headers: dict[str, str] | None = None


def info(num_shards: int) -> Msg:
    return Msg(
        encode(
            ClusterInfo(
                cluster_id="c",
                version="0",
                state="green",
                nodes=NodeCounts(total=1, healthy=1),
                shards=ShardCounts(
                    total=num_shards, replication_factor=1, active=num_shards, initializing=0, unassigned=0
                ),
                embedding_dim=4,
                map_revision=1,
                uptime_s=1.0,
            )
        )
    )


def entity(id_: str, shard: int) -> Msg:
    return Msg(encode(EntityReply(entity=out(id_, f"on {shard}"), applied_seq=1)))


def not_found(id_: str) -> Msg:
    body, headers = error_reply(404, f"entity {id_!r} not found")
    return Msg(body, headers)


@dataclass
class Conn:
    """Answers each subject with `answer(subject, payload)`; records what was asked."""

    answer: Callable[[str, dict[str, Any]], Msg]
    asked: list[str] = field(default_factory=list)

    async def request(self, subject: str, data: bytes, timeout: float = 0.5) -> Msg:
        self.asked.append(subject)
        return self.answer(subject, msgspec.json.decode(data))


def routed(id_: str) -> Msg:
    return Msg(encode(GetReply(entity=out(id_, "via router"), shard=-1)))


async def test_asks_the_owning_shard_and_learns_the_count_once() -> None:
    ids = [f"e{i}" for i in range(10)]

    def answer(subject: str, payload: dict[str, Any]) -> Msg:
        if subject == subjects.CLUSTER_INFO:
            return info(4)
        assert subject == subjects.shard_endpoint(shard_for(payload["id"], 4), "get"), subject
        assert payload["after"] == 7 and payload["consistency"] == "eventual"
        return entity(payload["id"], shard_for(payload["id"], 4))

    conn = Conn(answer)
    c = Client(conn)  # type: ignore[arg-type]
    for id_ in ids:
        tokens = {str(shard_for(id_, 4)): 7, "99": 1}
        reply = await c.get(id_, after=tokens, consistency="eventual")
        assert reply.shard == shard_for(id_, 4) and reply.entity.name == f"on {reply.shard}"
    assert conn.asked.count(subjects.CLUSTER_INFO) == 1
    assert subjects.GRAPH_GET not in conn.asked


async def test_kv_is_placed_as_the_router_writes_it() -> None:
    def answer(subject: str, payload: dict[str, Any]) -> Msg:
        if subject == subjects.CLUSTER_INFO:
            return info(8)
        assert subject == subjects.shard_endpoint(kv_shard(payload["key"], 8), "kv_get")
        return Msg(encode(KVValueReply(key=payload["key"], value="v", applied_seq=1)))

    c = Client(Conn(answer))  # type: ignore[arg-type]
    assert await c.kv_get("some key") == "v"


@pytest.mark.parametrize("shard_answer", ["503", "no responders", "paged", "500"])
async def test_falls_back_to_the_router_when_the_shard_cannot_answer(shard_answer: str) -> None:
    def answer(subject: str, payload: dict[str, Any]) -> Msg:
        if subject == subjects.CLUSTER_INFO:
            return info(2)
        if subject == subjects.GRAPH_GET:
            return routed(payload["id"])
        if shard_answer == "no responders":
            raise NoRespondersError
        if shard_answer == "paged":
            return Msg(entity(payload["id"], 0).data, {PAGED_HEADER: "cur node-1 2"})
        body, headers = error_reply(int(shard_answer), "cannot")
        return Msg(body, headers)

    conn = Conn(answer)
    reply = await Client(conn).get("x")  # type: ignore[arg-type]
    assert reply.entity.name == "via router"
    assert conn.asked[-1] == subjects.GRAPH_GET


async def test_no_count_no_direct_reads_and_no_question_every_time() -> None:
    def answer(subject: str, payload: dict[str, Any]) -> Msg:
        if subject == subjects.CLUSTER_INFO:
            raise NoRespondersError
        assert subject == subjects.GRAPH_GET
        return routed(payload["id"])

    conn = Conn(answer)
    c = Client(conn)  # type: ignore[arg-type]
    for _ in range(5):
        assert (await c.get("x")).entity.name == "via router"
    assert conn.asked.count(subjects.CLUSTER_INFO) == 1  # not again within PLACEMENT_RETRY_S


async def test_a_404_placed_by_a_stale_count_is_asked_again_where_the_id_lives_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "PLACEMENT_RECHECK_S", 0.0)
    count = [2]
    # An id whose shard differs between the two counts.
    id_ = next(f"e{i}" for i in range(100) if shard_for(f"e{i}", 2) != shard_for(f"e{i}", 3))

    def answer(subject: str, payload: dict[str, Any]) -> Msg:
        if subject == subjects.CLUSTER_INFO:
            return info(count[0])
        if subject == subjects.shard_endpoint(shard_for(payload["id"], 3), "get"):
            return entity(payload["id"], 3)
        return not_found(payload["id"])

    conn = Conn(answer)
    c = Client(conn)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await c.get(id_)  # the count is 2 and still 2: the 404 stands
    count[0] = 3  # the cluster was created again with three shards
    reply = await c.get(id_)
    assert reply.shard == shard_for(id_, 3) and reply.entity.name == "on 3"
