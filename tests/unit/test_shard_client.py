"""The ShardClient seam: NatsShardClient's one retry and error decoding (against a fake connection),
and the one fan-out error policy (router/fanout.gather, which ShardClient.fan_out uses)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from tests.unit.fake_shards import FakeShards
from torua.endpoints import encode, error_reply
from torua.errors import (
    BadRequest,
    Conflict,
    InternalError,
    NotFound,
    PayloadTooLarge,
    QueryTimeout,
    ToruaError,
    Unavailable,
)
from torua.model import ShardStatus
from torua.wire import ShardEntry, ShardMap
from torua_node.router.client import NatsShardClient, by_owner, token
from torua_node.router.fanout import gather, is_partial
from torua_node.shard import protocol as p

# ---------------------------------------------------------------------------------------------------
# NatsShardClient over a scripted connection


@dataclass
class Msg:
    data: bytes
    headers: dict[str, str] | None = None


@dataclass
class ScriptedNats:
    """Answers `request` from a script: a Msg, or an exception to raise."""

    script: list[Msg | BaseException]
    sent: list[tuple[str, bytes, float]] = field(default_factory=list)
    at: list[float] = field(default_factory=list)

    async def request(self, subject: str, data: bytes, timeout: float) -> Msg:
        self.sent.append((subject, data, timeout))
        self.at.append(time.monotonic())
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def smap(num_shards: int) -> ShardMap:
    entries = [ShardEntry(id=s, replicas=["n1"]) for s in range(num_shards)]
    return ShardMap(revision=1, num_shards=num_shards, replication_factor=1, shards=entries, embedding_dim=8)


def client_over(script: list[Msg | BaseException], shards: int = 4) -> tuple[NatsShardClient, ScriptedNats]:
    nc = ScriptedNats(script)
    return NatsShardClient(nc, lambda: smap(shards)), nc  # type: ignore[arg-type]


def ok_hits(seq: int = 7) -> Msg:
    return Msg(encode(p.HitsReply(hits=[("a", 0.5)], applied_seq=seq)))


def error(code: int, description: str) -> Msg:
    body, headers = error_reply(code, description)
    return Msg(body, headers)


ASK = p.ShardVector(vector=[1.0] * 8, k=3, after=5)


async def test_a_call_goes_to_the_shard_endpoint_and_decodes_the_reply() -> None:
    client, nc = client_over([ok_hits(9)])
    reply = await client.call(3, p.VECTOR, ASK)
    assert reply == p.HitsReply(hits=[("a", 0.5)], applied_seq=9)
    [(subject, data, timeout)] = nc.sent
    assert subject == "torua.shard.3.vector" and timeout == 5.0
    assert msgspec.json.decode(data) == {"after": 5, "consistency": "strong", "log_id": None, "vector": [1.0] * 8, "k": 3, "target": "chunks"}


@pytest.mark.parametrize("first", [NoRespondersError(), NatsTimeout(), error(503, "replica behind")])
async def test_unavailable_no_responders_or_timeout_is_retried_once_after_50ms(first: Msg | BaseException) -> None:
    client, nc = client_over([first, ok_hits()])
    assert (await client.call(0, p.VECTOR, ASK)).hits == [("a", 0.5)]
    assert len(nc.sent) == 2 and nc.sent[0] == nc.sent[1]
    assert nc.at[1] - nc.at[0] >= 0.045


@pytest.mark.parametrize(
    "script,expected,text",
    [
        ([NoRespondersError(), NoRespondersError()], Unavailable, "no replica of shard 2 answered (NoRespondersError)"),
        ([NatsTimeout(), NatsTimeout()], Unavailable, "no replica of shard 2 answered (TimeoutError)"),
        ([error(503, "behind"), error(503, "still behind")], Unavailable, "still behind"),
        ([NatsTimeout(), error(503, "behind")], Unavailable, "behind"),
    ],
)
async def test_a_second_failure_is_raised(script: list[Any], expected: type[ToruaError], text: str) -> None:
    client, nc = client_over(script)
    with pytest.raises(expected) as err:
        await client.call(2, p.VECTOR, ASK)
    assert err.value.description == text and err.value.code == 503
    assert len(nc.sent) == 2


@pytest.mark.parametrize(
    "code,expected",
    [(400, BadRequest), (404, NotFound), (409, Conflict), (413, PayloadTooLarge), (408, QueryTimeout), (500, InternalError)],
)
async def test_other_errors_are_raised_at_once_with_their_code(code: int, expected: type[ToruaError]) -> None:
    client, nc = client_over([error(code, f"failure {code}"), ok_hits()])
    with pytest.raises(expected) as err:
        await client.call(1, p.VECTOR, ASK)
    assert (err.value.code, err.value.description) == (code, f"failure {code}")
    assert len(nc.sent) == 1


async def test_a_foreign_error_body_keeps_the_header_description() -> None:
    client, _ = client_over([Msg(b"not json", {"Nats-Service-Error-Code": "404", "Nats-Service-Error": "gone"})])
    with pytest.raises(NotFound, match="gone"):
        await client.call(1, p.GET, p.ShardGet(id="x"))


async def test_without_a_shard_map_the_client_is_unavailable() -> None:
    client = NatsShardClient(ScriptedNats([]), lambda: None)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="shard map"):
        _ = client.num_shards
    with pytest.raises(Unavailable):
        client.owner("x")


def test_tokens_and_owners() -> None:
    assert token({"3": 17, "1": 2}, 3) == 17 and token({"3": 17}, 0) == 0
    fake = FakeShards(4)
    groups = by_owner(fake, [f"e{i}" for i in range(40)] + ["e0"])
    assert sorted(groups) == sorted({fake.owner(f"e{i}") for i in range(40)})
    assert all(fake.owner(k) == s for s, keys in groups.items() for k in keys)
    assert sum(map(len, groups.values())) == 41 and groups[fake.owner("e0")].count("e0") == 2


# ---------------------------------------------------------------------------------------------------
# The fan-out policy


def answers(results: dict[int, object]) -> dict[int, Any]:
    """One call per shard: return the value, or raise it if it is an exception."""

    def call(value: object) -> Any:
        async def run() -> object:
            if isinstance(value, BaseException):
                raise value
            return value

        return run

    return {s: call(v) for s, v in results.items()}


@dataclass
class Seq:
    applied_seq: int


@pytest.mark.parametrize(
    "failure",
    [Unavailable("no replica of shard 1 answered (TimeoutError)"), InternalError("boom"), TimeoutError(),
     RuntimeError("decoder broke"), msgspec.ValidationError("Expected `int`")],
    ids=["503", "500", "timeout", "unexpected", "undecodable"],
)
async def test_a_shard_that_cannot_answer_makes_the_reply_partial(failure: Exception) -> None:
    status: dict[str, ShardStatus] = {}
    out = await gather(answers({0: Seq(3), 1: failure, 2: Seq(4)}), status)
    assert out == {0: Seq(3), 2: Seq(4)}
    assert status["0"] == ShardStatus(ok=True, applied_seq=3) and status["2"] == ShardStatus(ok=True, applied_seq=4)
    assert status["1"].ok is False and status["1"].error
    if isinstance(failure, ToruaError):
        assert status["1"].error == failure.description
    else:
        assert status["1"].error.startswith(type(failure).__name__)
    assert is_partial(status)


@pytest.mark.parametrize(
    "failure", [BadRequest("bad field"), NotFound("no such"), PayloadTooLarge("too big"), Conflict("c")],
    ids=["400", "404", "413", "409"],
)
async def test_a_client_error_is_raised_not_hidden_in_a_partial_reply(failure: ToruaError) -> None:
    status: dict[str, ShardStatus] = {}
    with pytest.raises(type(failure)) as err:
        await gather(answers({0: Seq(1), 1: Unavailable("down"), 2: failure}), status)
    assert err.value is failure


async def test_applied_seq_is_the_oldest_answer_and_failed_shards_are_not_asked_again() -> None:
    status: dict[str, ShardStatus] = {}
    await gather(answers({0: Seq(9), 1: Unavailable("down")}), status)
    asked: list[int] = []

    def counted(s: int, seq: int) -> Any:
        async def run() -> Seq:
            asked.append(s)
            return Seq(seq)

        return run

    out = await gather({0: counted(0, 5), 1: counted(1, 5), 2: counted(2, 6)}, status)
    assert sorted(asked) == [0, 2] and sorted(out) == [0, 2]
    assert status["0"].applied_seq == 5 and status["2"].applied_seq == 6
    assert status["1"] == ShardStatus(ok=False, error="down")


async def test_cancellation_is_not_a_shard_failure() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await gather({0: cancelled}, {})


async def test_fan_out_through_a_shard_client_uses_the_policy() -> None:
    fake = FakeShards(3)
    fake.shards[1].applied_seq = 40
    fake.fail[2] = Unavailable("no replica of shard 2 answered (NoRespondersError)")
    status: dict[str, ShardStatus] = {}
    asks = {s: p.ShardEntities(ids=["x"]) for s in range(3)}
    replies = await fake.fan_out(p.ENTITIES, asks, status)
    assert sorted(replies) == [0, 1] and all(isinstance(r, p.EntitiesReply) for r in replies.values())
    assert status == {
        "0": ShardStatus(ok=True, applied_seq=1),
        "1": ShardStatus(ok=True, applied_seq=40),
        "2": ShardStatus(ok=False, error="no replica of shard 2 answered (NoRespondersError)"),
    }
    fake.fail[(0, "entities")] = BadRequest("ids: expected a list")
    with pytest.raises(BadRequest):
        await fake.fan_out(p.ENTITIES, asks, {})
