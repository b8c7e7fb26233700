"""The cheap look at a shard's log end for strong reads (shard/readindex.log_state), on a real
nats-server: the same end as JetStream's last message on the subject, without fetching that
message when nothing was written since the earlier look, and no trust in an earlier look at
another log."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from torua.retention import log_id_of
from torua.streams import ensure_wal_stream
from torua.subjects import WAL_STREAM, wal_subject
from torua_node.shard.readindex import log_state


async def last_on(nc: NATS, shard: int) -> int:
    return (await nc.jetstream().get_last_msg(WAL_STREAM, wal_subject(shard))).seq or 0


async def test_the_end_is_the_subjects_last_sequence_and_an_unchanged_log_costs_no_entry(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    subject = wal_subject(3)
    assert (await log_state(nc, subject, None)).end == 0  # nothing on the subject yet
    big = b"x" * 400_000
    for _ in range(3):
        await js.publish(subject, big)
    await js.publish(wal_subject(4), b"other shard")
    first = await log_state(nc, subject, None)
    assert first.end == await last_on(nc, 3) == 3
    assert first.stream_last == 4
    # The identity replicas store (from nats-py's stream info): equal, or every read would re-check.
    info = await js.stream_info(WAL_STREAM)
    assert info.created is not None and first.log_id == log_id_of(info.created)

    # Nothing new on this subject (another shard's write does not count): the earlier end stands,
    # learnt without the 400 KB entry coming over the wire.
    await js.publish(wal_subject(4), b"other shard")
    before = nc.stats["in_bytes"]
    again = await log_state(nc, subject, first)
    assert again.end == 3
    assert nc.stats["in_bytes"] - before < 20_000

    # A new entry on the subject: the new end.
    await js.publish(subject, b"new")
    assert (await log_state(nc, subject, again)).end == await last_on(nc, 3) == 6


async def test_an_earlier_look_at_another_log_is_not_trusted(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    subject = wal_subject(0)
    for _ in range(5):
        await js.publish(subject, b"old log")
    old = await log_state(nc, subject, None)
    assert old.end == 5

    # The stream re-created with fewer entries: an earlier end of 5 would hide the new writes.
    await js.delete_stream(WAL_STREAM)
    await ensure_wal_stream(nc)
    await js.publish(subject, b"new log")
    now = await log_state(nc, subject, old)
    assert now.log_id != old.log_id
    assert now.end == 1
