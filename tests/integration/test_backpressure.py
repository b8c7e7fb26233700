"""Write backpressure: when a shard's replicas fall behind the log, writes to that shard get a fast
503 with a retry hint (other shards keep taking writes), and `torua ingest` waits instead of failing.

The lag is made real by pausing the replica's own JetStream consumer of its shard's log (a server
feature since NATS 2.11): the node and its router keep running, only applying stops."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import nats
import pytest

from torua import Client
from torua.errors import NotFound, Overloaded
from torua.hashing import shard_for
from torua.ingest import IngestOptions, ingest_texts
from torua.model import Entity
from torua.subjects import WAL_STREAM, wal_subject
from torua.up import LocalCluster

pytestmark = pytest.mark.timeout(180)


def ids_on(shard: int, num_shards: int, prefix: str, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if shard_for(f"{prefix}{i}", num_shards) == shard:
            out.append(f"{prefix}{i}")
        i += 1
    return out


class PausedLog:
    """Keep every consumer of one shard's log paused (its replicas stop applying) until resumed; a
    replica that re-creates its consumer meanwhile finds the new one paused too."""

    def __init__(self, url: str, shard: int) -> None:
        self.url, self.subject = url, wal_subject(shard)
        self.paused: set[str] = set()

    async def _pause_all(self) -> None:
        until = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        for c in await self.jsm.consumers_info(WAL_STREAM):
            if c.config.filter_subject == self.subject and c.name not in self.paused:
                await self.jsm.pause_consumer(WAL_STREAM, c.name, until)
                self.paused.add(c.name)

    async def _keep_paused(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            await self._pause_all()

    async def __aenter__(self) -> PausedLog:
        self.nc = await nats.connect(self.url)
        self.jsm = self.nc.jsm()
        await self._pause_all()
        assert self.paused, f"no replica consumes {self.subject}"
        self.keeper: asyncio.Task[None] | None = asyncio.create_task(self._keep_paused())
        return self

    async def resume(self) -> None:
        if self.keeper is not None:
            self.keeper.cancel()
            self.keeper = None
        for c in await self.jsm.consumers_info(WAL_STREAM):
            if c.config.filter_subject == self.subject:
                await self.jsm.resume_consumer(WAL_STREAM, c.name)

    async def __aexit__(self, *exc: object) -> None:
        await self.resume()
        await self.nc.close()


async def test_writes_to_a_lagging_shard_are_refused_fast_and_ingest_waits(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(nodes=2, shards=2, replicas=1, TORUA_MAX_APPLY_LAG="1")
    cluster.start()
    lagging, live = ids_on(0, 2, "lag-", 2000), ids_on(1, 2, "ok-", 1)
    async with await Client.connect(cluster.url, request_timeout=5, retries=0) as client:
        await client.wait_for_state("green", timeout=30)
        async with PausedLog(cluster.url, 0) as paused:
            # Stored in the log, through both routers (the queue group picks one at random; each
            # router holds back the writes it published itself): 12 writes miss one with p < 0.001.
            for n in range(12):
                await client.upsert(entities=[Entity(id=lagging[n], name="probe")])
            # Each router measures the lag of the writes it published itself, so one router may refuse
            # while the other still accepts. Every router that stored a write did so before the client
            # saw it acknowledged: once the last acknowledged write is older than the limit (1 s), both
            # routers are behind by more, and a run of refusals is theirs.
            refused: Overloaded | None = None
            in_a_row, n, last_accepted = 0, 12, time.monotonic()
            deadline = time.monotonic() + 20
            while (in_a_row < 8 or time.monotonic() - last_accepted < 1.2) and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    await client.upsert(entities=[Entity(id=lagging[n], name="probe")])
                    in_a_row, last_accepted = 0, time.monotonic()
                except Overloaded as exc:
                    refused, took, in_a_row = exc, time.monotonic() - started, in_a_row + 1
                    await asyncio.sleep(0.01)  # pace the probes while the last acknowledged write ages
                n += 1
            assert refused is not None and in_a_row >= 8, "writes to the lagging shard were not refused"
            assert took < 0.5  # refused at once, not after a timeout
            assert refused.retry_after_ms and "shard 0" in refused.description
            await client.upsert(entities=[Entity(id=live[0], name="probe")])  # the other shard takes writes

            # Ingest into both shards while shard 0 lags: it waits, then finishes once the replica applies.
            texts = {f"note {i}": f"Wren Halloway{i} repaired the Tidewater Mill{i} in spring." for i in range(12)}
            # force: skip the markers' reads, which would wait for shard 0 like any strong read
            ingest = asyncio.create_task(ingest_texts(client, texts, IngestOptions(force=True)))
            done, _ = await asyncio.wait({ingest}, timeout=2.0)
            assert not done, "ingest should wait for the lagging shard, not finish or fail"
            await paused.resume()
            stats = await asyncio.wait_for(ingest, 60)
            assert stats.waits >= 1 and stats.documents == len(texts)

        for i in range(12):  # nothing acknowledged was lost
            assert (await client.get(lagging[i])).entity.name == "probe"
        assert (await client.get(live[0])).entity.name == "probe"
        # The refused write stored nothing: its id is unknown.
        with pytest.raises(NotFound):
            await client.get(lagging[n - 1])
