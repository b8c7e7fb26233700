"""The router's read point on real parts: the log end it reads is JetStream's, and a strong k-hop
read through a real cluster asks JetStream for each shard's log end once, not once per round."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.integration.test_point_reads import api_stats, local_reads
from torua import Client
from torua.model import Entity, Relation
from torua.streams import ensure_wal_stream
from torua.subjects import WAL_STREAM, wal_subject
from torua.up import LocalCluster
from torua_node.router.readpoint import StreamLogEnds

pytestmark = pytest.mark.timeout(180)

MSG_GET = f"$JS.API.STREAM.MSG.GET.{WAL_STREAM}"


async def test_the_log_end_is_the_last_sequence_on_the_shards_subject(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    ends = StreamLogEnds(nc)
    assert await ends.next_end(0) == 0  # nothing on the subject yet
    await js.publish(wal_subject(0), b"a")
    big = await js.publish(wal_subject(1), b"x" * 900_000)  # a large entry
    last = await js.publish(wal_subject(0), b"b")
    assert await ends.next_end(0) == last.seq == (await js.get_last_msg(WAL_STREAM, wal_subject(0))).seq
    assert await ends.next_end(1) == big.seq
    before = nc.stats["in_bytes"]
    assert await ends.next_end(1) == big.seq  # asked again, unchanged: the entry is not sent again
    assert nc.stats["in_bytes"] - before < 20_000
    assert await ends.next_end(2) == 0
    identity = ends.log_id(0)
    await js.delete_stream(WAL_STREAM)
    await ensure_wal_stream(nc)
    assert await ends.next_end(0) == 0  # the stream re-created: the earlier end is not kept
    assert ends.log_id(0) != identity


class Watch:
    """Copies of the requests a router sends to shards and of JetStream log-end requests, per shard."""

    def __init__(self) -> None:
        self.rounds: Counter[int] = Counter()
        self.log_ends: Counter[int] = Counter()

    async def shard_request(self, msg: Msg) -> None:
        parts = msg.subject.split(".")  # torua.shard.<n>.<op>
        if parts[3] in ("edges", "entities"):
            self.rounds[int(parts[2])] += 1

    async def msg_get(self, msg: Msg) -> None:
        subject = msgspec.json.decode(msg.data).get("last_by_subj")  # replicas' log checks ask by seq
        if subject is not None:
            self.log_ends[int(subject.rsplit(".", 1)[1])] += 1


async def test_a_k_hop_read_learns_each_shards_log_end_once(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster: LocalCluster = make_cluster(nodes=1, shards=4, replicas=1)
    cluster.start()
    async with await Client.connect(cluster.url, request_timeout=10.0) as client:
        await client.wait_for_state("green", timeout=60)
        ids = [f"n{i}" for i in range(30)]
        await client.upsert(
            entities=[Entity(id=i, name=i.upper()) for i in ids],
            relations=[Relation(source=s, target=t, type="NEXT") for s, t in itertools.pairwise(ids)],
        )
        watch = Watch()
        await client.nc.subscribe("torua.shard.*.*", cb=watch.shard_request)
        await client.nc.subscribe(MSG_GET, cb=watch.msg_get)
        await client.nc.flush()
        before = await api_stats(client.nc, nodes=1)
        reply = await client.neighbors(["n0"], hops=5, direction="out")
        await client.nc.flush()  # the copies were sent before the reply: all are in once the server answers
        assert [n.id for n in reply.nodes] == ids[:6] and not reply.partial
        # Shards read in several rounds (the one node's router asks its own replicas in-process, so
        # its rounds are counted by its in-process gauge, not as messages)...
        in_process = local_reads(await api_stats(client.nc, nodes=1), "edges") - local_reads(before, "edges")
        in_process += local_reads(await api_stats(client.nc, nodes=1), "entities") - local_reads(before, "entities")
        assert sum(watch.rounds.values()) + in_process > 4, (watch.rounds, in_process)
        # Every shard's log end learnt once, beside the first round (later rounds read most shards).
        assert watch.log_ends == Counter(dict.fromkeys(range(4), 1)), (watch.rounds, watch.log_ends)
