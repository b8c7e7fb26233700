"""One version per write across its retries (`router/versions.py`), with a real nats-server: a write
whose first attempt stored some shards only, retried through another router, carries the first
attempt's version on every shard."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from tests.unit.fake_shards import FakeShards
from tests.unit.test_data_api import Embedding
from torua import subjects
from torua.errors import Unavailable
from torua.hlc import HybridClock
from torua.model import Entity, Relation, UpsertRequest
from torua.streams import ensure_versions_bucket, ensure_wal_stream
from torua.subjects import WAL_STREAM, wal_subject
from torua_node.router.api import DataApi
from torua_node.router.cache import ResultCache
from torua_node.router.graph import GraphReads
from torua_node.router.versions import WriteVersions
from torua_node.shard.wal import decode_entry

SHARDS = 4


class FailOnce:
    """The router's JetStream, but the first publish to `subject` times out (stored nowhere)."""

    def __init__(self, js: Any, subject: str) -> None:
        self._js = js
        self.subject = subject
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)  # key_value and the rest: the real context's

    async def publish(self, subject: str, *args: Any, **kwargs: Any) -> Any:
        if subject == self.subject and not self.failed:
            self.failed = True
            raise NatsTimeout
        return await self._js.publish(subject, *args, **kwargs)


def later_clock(seconds: float) -> HybridClock:
    """Another router's clock, `seconds` ahead: its versions are all greater than this one's."""
    base = HybridClock()
    return HybridClock(now_us=lambda: base._now_us() + int(seconds * 1e6))


async def versions_in_log(nc: NATS, request_id: str) -> dict[int, int]:
    js = nc.jetstream()
    out: dict[int, int] = {}
    for shard in range(SHARDS):
        try:
            msg = await js.get_last_msg(WAL_STREAM, wal_subject(shard))
        except Exception:  # noqa: BLE001 - no entry on this shard
            continue
        entry = decode_entry(msg.data or b"")
        if entry.request_id == request_id:
            out[shard] = entry.version
    return out


async def test_a_retry_through_another_router_keeps_the_first_attempts_version(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    await ensure_versions_bucket(nc)
    js = nc.jetstream()
    fake = FakeShards(SHARDS)
    ids = ["ada", "bo", "cy", "dee", "eve", "fay"]
    owners = {fake.owner(i) for i in ids}
    assert len(owners) >= 2
    req = UpsertRequest(
        entities=[Entity(id=i, name=i.title()) for i in ids],
        relations=[Relation(source=a, target=b, type="KNOWS") for a, b in zip(ids, ids[1:])],
        request_id="write-1",
    )
    lost = max(owners)
    first_clock = HybridClock()
    first = DataApi(FailOnce(js, wal_subject(lost)), fake, GraphReads(fake), Embedding(), ResultCache(),  # type: ignore[arg-type]
                    first_clock)
    with pytest.raises(Unavailable, match="retry with the same request_id"):
        await first.upsert(req)
    stored = await versions_in_log(nc, "write-1")
    assert lost not in stored and len(set(stored.values())) == 1
    [v1] = set(stored.values())

    second_clock = later_clock(5)
    second = DataApi(js, fake, GraphReads(fake), Embedding(), ResultCache(), second_clock)
    reply = await second.upsert(req)
    assert reply.request_id == "write-1"
    everywhere = await versions_in_log(nc, "write-1")
    assert set(everywhere) == owners and set(everywhere.values()) == {v1}
    # The other router's later writes still come after it.
    assert second_clock.now() > v1


async def test_distinct_writes_get_distinct_versions_and_a_repeat_the_same(nc: NATS) -> None:
    await ensure_versions_bucket(nc)
    js = nc.jetstream()
    one, other = WriteVersions(js, HybridClock()), WriteVersions(js, later_clock(5))
    a, b = await one.of("a"), await one.of("b")
    assert a != b
    assert await other.of("a") == a and await other.of("b") == b
    assert await other.of("c") > b


async def test_without_the_bucket_versions_come_from_the_clock(nc: NATS) -> None:
    js = nc.jetstream()
    versions = WriteVersions(js, HybridClock())
    a = await versions.of("x")
    assert await versions.of("x") > a  # nothing recorded: a repeat is a new version
    with pytest.raises(Exception):  # noqa: B017 - any "not found": the bucket was never made
        await js.key_value(subjects.VERSIONS_BUCKET)
