"""A coordinator whose map write loses the compare-and-set steps down at once, and a map written
under a later epoch raises the next leader's epoch above it (in-process coordinator, real NATS)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.client import Client as NATS

from torua import subjects
from torua.natsserver import NatsServer
from torua.streams import ensure_bucket
from torua.wire import Heartbeat, ShardMap
from torua_coordinator.app import Coordinator
from torua_coordinator.settings import CoordinatorSettings

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)


async def test_lost_compare_and_set_steps_down_and_epochs_only_rise(nats_server: NatsServer, nc: NATS) -> None:
    settings = CoordinatorSettings(
        nats_url=nats_server.url, coordinator_id="c1", num_shards=2, replication_factor=1,
        heartbeat_interval=0.2, node_timeout=1.5, reassign_delay=1.5, lease_ttl=1.0,
    )
    coord = Coordinator(settings)
    task = asyncio.create_task(coord.run())
    try:
        await wait_for(lambda: _true(coord.lease.held and coord._service is not None), timeout=10, what="c1 leading")
        first_epoch = coord.lease.epoch
        kv = await ensure_bucket(nc)
        # Another writer (a leader of a later term, as far as c1 can tell) changes the map behind c1.
        entry = await kv.get(subjects.KV_SHARDMAP)
        theirs = msgspec.structs.replace(msgspec.json.decode(entry.value, type=ShardMap), epoch=first_epoch + 10)
        await kv.update(subjects.KV_SHARDMAP, msgspec.json.encode(theirs), last=entry.revision)
        # A node joins: c1's next map write fails its compare-and-set.
        hb = Heartbeat(node_id="n1", incarnation=1, seq=1, version="test", uptime_s=1.0)

        async def republished() -> bool:
            await nc.publish(subjects.heartbeat("n1"), msgspec.json.encode(hb))
            smap = msgspec.json.decode((await kv.get(subjects.KV_SHARDMAP)).value, type=ShardMap)
            return any(e.replicas == ["n1"] for e in smap.shards) and smap.epoch > first_epoch + 10

        await wait_for(republished, timeout=20, what="the map republished above the other writer's epoch")
        # It stepped down (a new term began) rather than overwrite a map it had not read.
        assert coord.lease.epoch == first_epoch + 11
    finally:
        coord.stop()
        await asyncio.wait_for(task, 10)


async def _true(value: bool) -> bool:
    return value
