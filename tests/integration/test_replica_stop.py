"""A shard dropped just as a NATS reply reaches its log task is closed, and reopens when given back.

On Python 3.11, asyncio.wait_for (inside every nats-py request) returns the reply instead of raising
when a cancel lands as the reply arrives (CPython gh-86296): the replica's log task missed its
cancel, stop() waited on it forever, and the node's reconcile lock was never released.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from torua.streams import ensure_wal_stream
from torua_node.node.replicas import ReplicaManager

from tests.conftest import wait_for

DIM = 8


async def test_shard_dropped_as_a_reply_arrives_is_closed_and_reopens(nc: NATS, tmp_path: Path) -> None:
    await ensure_wal_stream(nc)
    replicas = ReplicaManager(tmp_path / "shards", node_id="node-1", buffer_pool_mb=16, max_db_size_gb=1)
    drops: list[asyncio.Task[bool]] = []

    async def on_reply(msg: Msg) -> None:
        # Nothing else requests on this connection: the first reply is the one the new replica's
        # log task waits for. A copy reaches this subscription in the same read: drop the shard now.
        if not drops:
            drops.append(asyncio.create_task(replicas.reconcile(set(), nc, DIM)))

    await nc.subscribe("_INBOX.>", cb=on_reply)
    await nc.flush()
    try:
        await replicas.reconcile({0}, nc, DIM)

        async def dropped() -> bool:
            return bool(drops) and drops[0].done() and 0 not in replicas.replicas

        await wait_for(dropped, timeout=15, what="shard 0 closed and removed")
        assert drops[0].result() is True
        # The shard is given back (the coordinator's next map): it must open again and serve.
        await asyncio.wait_for(replicas.reconcile({0}, nc, DIM), 15)

        async def serving() -> bool:
            replica = replicas.replicas.get(0)
            return replica is not None and replica.state == "active"

        await wait_for(serving, timeout=15, what="shard 0 reopened and serving")
    finally:
        await _end(drops + [r._task for r in replicas.replicas.values() if r._task is not None])
    await replicas.close_all()


async def _end(tasks: list[asyncio.Task]) -> None:
    """Cancel until done (bounded): a task that missed its cancel must fail this test, not hang it."""
    for _ in range(50):
        if all(t.done() for t in tasks):
            return
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=0.2)
