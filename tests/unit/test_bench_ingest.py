"""The benchmarks' loader (`bench._cluster.cluster_ingest`) waits out write backpressure as
`torua ingest` does: a batch refused with 503 and a retry hint is sent again, not a failed run."""

from __future__ import annotations

import time
from typing import Any

from bench._cluster import cluster_ingest
from torua.errors import Overloaded
from torua.model import UpsertReply


class Refusing:
    """A client whose first two upserts are refused as a lagging shard refuses them."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refusals = 2

    async def upsert(self, **batch: Any) -> UpsertReply:
        if self.refusals:
            self.refusals -= 1
            raise Overloaded("replicas of shard 0 are behind the log", retry_after_ms=20)
        self.sent.append(batch)
        return UpsertReply(written={}, tokens={"0": len(self.sent)}, request_id=str(len(self.sent)))


async def test_a_refused_batch_is_sent_again_after_the_hint() -> None:
    client = Refusing()
    work = [{"entities": [f"e{i}"]} for i in range(3)]
    started = time.monotonic()
    _, tokens = await cluster_ingest(client, work, concurrency=1)  # type: ignore[arg-type]
    assert client.sent == work  # every batch stored once, in order
    assert tokens == {"0": 3}
    assert time.monotonic() - started >= 0.04  # waited as told, twice
