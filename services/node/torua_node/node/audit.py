"""Replicas compare their content digests periodically, at the same log position.

Every `TORUA_DIGEST_INTERVAL` seconds, for each shard whose first active replica (in the shard
map's order of node ids) is on this node, that replica:

1. learns the end of the shard's log, `T` (the strong-read request: one JetStream round trip);
2. takes its own content digest at `T`: apply applies up to `T` and holds still there until the
   digest is taken (`ShardReplica.digest_at`);
3. asks each other active replica `torua.node.<id>.digest {"shard", "at": T, "expect", "peer"}`;
   each takes its digest at `T` the same way, compares it with `expect` and records the result;
4. records the comparison (`DigestCheck`): `node.info` shows it per replica, heartbeats carry it to
   the coordinator, whose `cluster.info` / `cluster.health` turn red naming the shard on a mismatch,
   and metrics count it (`torua_replica_digest_mismatch`).

Replicas that apply the same log hold the same content at the same position (apply is
deterministic), so a mismatch means a replica's content is wrong: `rebuild` it
(`torua.node.<id>.control {"op": "rebuild", "params": {"shard": n}}`). Replicas that could not
reach `T` in time are left out of that round.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS

from torua import subjects
from torua.endpoints import encode, error_of
from torua.errors import NotFound
from torua.metrics import GaugeReading, metrics
from torua.wire import DigestReply, DigestRequest, ShardMap
from torua_node.node.replicas import ReplicaManager
from torua_node.shard.replica import ShardReplica

__all__ = ["DigestAudit", "answer_digest", "DIGEST_WAIT_S"]

log = logging.getLogger(__name__)

# How long a replica may take to reach the compared position (and hash there).
DIGEST_WAIT_S = 20.0


async def answer_digest(replica: ShardReplica | None, req: DigestRequest, node_id: str) -> DigestReply:
    """`torua.node.<id>.digest`: this node's replica's digest (at `req.at`), compared with `expect`."""
    if replica is None or replica.state not in ("recovering", "active"):
        raise NotFound(f"shard {req.shard} has no open replica on node {node_id}")
    seq, digest = await replica.digest_at(req.at, DIGEST_WAIT_S)
    match = None
    if req.expect is not None and req.at is not None and seq == req.at:
        match = replica.record_digest(seq, digest, {req.peer or "peer": req.expect}).match
    return DigestReply(shard=req.shard, applied_seq=seq, digest=digest, match=match)


class DigestAudit:
    def __init__(
        self, nc: NATS, node_id: str, replicas: ReplicaManager, shardmap: Callable[[], ShardMap | None], interval: float
    ) -> None:
        self.nc = nc
        self.node_id = node_id
        self.replicas = replicas
        self.shardmap = shardmap
        self.interval = interval
        metrics.add_gauges(self._gauge)

    def _gauge(self) -> GaugeReading:
        samples = [
            ([str(s)], 0.0 if r.digest_check.match else 1.0)
            for s, r in sorted(self.replicas.replicas.items())
            if r.digest_check is not None
        ]
        return ("torua_replica_digest_mismatch", "1 if this replica's content digest differed from a peer's at the"
                " last comparison", ["shard"], samples)

    async def run(self) -> None:
        if self.interval <= 0:
            return
        while True:
            # Spread over the interval, so nodes and shards do not all hash at once.
            await asyncio.sleep(self.interval * random.uniform(0.8, 1.2))
            for shard in sorted(self.replicas.replicas):
                try:
                    await self.audit(shard)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.warning("shard %d: digest comparison failed: %s: %s", shard, type(exc).__name__, exc,
                                extra={"shard": shard})

    async def audit(self, shard: int) -> bool:
        """Compare this node's replica of `shard` with the other active ones, if this node leads the
        comparison; returns whether a comparison was recorded."""
        replica = self.replicas.replicas.get(shard)
        smap = self.shardmap()
        if replica is None or replica.state != "active" or smap is None:
            return False
        entry = next((e for e in smap.shards if e.id == shard), None)
        active = sorted(entry.active) if entry is not None else []
        if not active or active[0] != self.node_id or len(active) < 2:
            return False
        at = (await replica.log_end.get()).end
        if at == 0:
            return False
        seq, digest = await replica.digest_at(at, DIGEST_WAIT_S)
        if seq != at:
            return False  # already past it (the hold came too late): next round
        req = DigestRequest(shard=shard, at=at, expect=digest, peer=self.node_id)
        answers = await asyncio.gather(*(self._ask(peer, req) for peer in active[1:]))
        peers = {peer: a.digest for peer, a in zip(active[1:], answers) if a is not None and a.applied_seq == at}
        if not peers:
            return False
        replica.record_digest(at, digest, peers)
        return True

    async def _ask(self, peer: str, req: DigestRequest) -> DigestReply | None:
        try:
            msg = await self.nc.request(subjects.node_endpoint(peer, "digest"), encode(req), timeout=DIGEST_WAIT_S + 5)
        except Exception as exc:  # noqa: BLE001 - peer away or slow: left out of this round
            log.debug("digest request to %s failed: %s", peer, type(exc).__name__)
            return None
        if error_of(msg.headers, msg.data) is not None:
            return None
        return msgspec.json.decode(msg.data, type=DigestReply)
