"""The one look at the log for strong reads (shard/readindex.StreamEnds), against a model of
JetStream that answers each request at a moment of the model's choosing, writes landing in between:
every write acknowledged before a caller asked is reflected in the end it gets (whatever the order
in which JetStream handles the look's requests, and whatever position a replica tells it), an end
is always an entry of the shard actually in the log, and a look in flight is never shared with a
caller that arrived after it began."""

from __future__ import annotations

import asyncio
import bisect
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec

from torua.subjects import WAL_STREAM
from torua_node.shard.readindex import JS_API, StreamEnds

INFO = f"{JS_API}.STREAM.INFO.{WAL_STREAM}"
MSG_GET = f"{JS_API}.STREAM.MSG.GET.{WAL_STREAM}"


@dataclass
class Msg:
    data: bytes


class Stream:
    """JetStream's TORUA_WAL in memory: entry `seq` (from 1) is on the subject of shard `entries[seq - 1]`."""

    def __init__(self) -> None:
        self.entries: list[int] = []
        self.by_shard: dict[int, list[int]] = {}
        self.created = "2026-12-01T00:00:00.123456789Z"

    def write(self, shard: int) -> int:
        self.entries.append(shard)
        self.by_shard.setdefault(shard, []).append(len(self.entries))
        return len(self.entries)

    def on(self, shard: int) -> list[int]:
        return self.by_shard.get(shard, [])

    def answer(self, subject: str, payload: bytes) -> bytes:
        if subject == INFO:
            return msgspec.json.encode({"created": self.created, "state": {"last_seq": len(self.entries)}})
        assert subject == MSG_GET, subject
        req: dict[str, Any] = msgspec.json.decode(payload)
        shard = int((req.get("last_by_subj") or req["next_by_subj"]).rsplit(".", 1)[1])
        mine = self.on(shard)
        if "last_by_subj" in req:
            seq = mine[-1] if mine else 0
        else:
            at = bisect.bisect_left(mine, req["seq"])
            seq = mine[at] if at < len(mine) else 0
        if not seq:
            return msgspec.json.encode({"error": {"code": 404, "err_code": 10037, "description": "no message found"}})
        return msgspec.json.encode({"message": {"seq": seq, "subject": f"torua.wal.{shard}", "data": "eA=="}})


class Connection:
    """The NATS connection StreamEnds asks: each request reaches the model after a random number of
    the event loop's turns, and its answer comes back after another (with `held`: when the test
    lets it, each answer's gate put in the queue)."""

    def __init__(self, stream: Stream, rng: random.Random | None = None) -> None:
        self.stream = stream
        self.rng = rng
        self.sent: list[str] = []
        self.held: asyncio.Queue[asyncio.Event] | None = None
        self.arriving: asyncio.Queue[tuple[str, asyncio.Event]] | None = None

    async def _turns(self) -> None:
        for _ in range(self.rng.randrange(6) if self.rng is not None else 0):
            await asyncio.sleep(0)

    async def request(self, subject: str, payload: bytes, timeout: float = 5.0) -> Msg:
        self.sent.append(subject.split(".")[3])
        held = self.held
        if self.arriving is not None:  # reaches JetStream when the test lets it
            gate = asyncio.Event()
            self.arriving.put_nowait((subject.split(".")[3], gate))
            await gate.wait()
        await self._turns()
        data = self.stream.answer(subject, payload)  # the moment JetStream handles it
        if held is not None:  # the answer is on its way until the test lets it arrive
            gate = asyncio.Event()
            held.put_nowait(gate)
            await gate.wait()
        await self._turns()
        return Msg(data)


async def test_every_write_acknowledged_before_a_caller_asked_is_in_its_end_whatever_the_order() -> None:
    for seed in range(20):
        assert await concurrent_looks(seed, shards=4, writers=2, readers=6, reads=40) >= 6 * 40


async def concurrent_looks(seed: int, shards: int, writers: int, readers: int, reads: int) -> int:
    """Writers and readers on the model, every request handled after a random number of turns;
    checks each read, returns how many shard ends it checked."""
    rng = random.Random(seed)
    stream = Stream()
    ends = StreamEnds(Connection(stream, rng))  # type: ignore[arg-type]
    acked: Counter[int] = Counter()  # per shard, the last write acknowledged to its writer
    done = asyncio.Event()
    checked = 0

    async def writer() -> None:
        while not done.is_set():
            shard = rng.randrange(shards)
            seq = stream.write(shard)  # stored...
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            acked[shard] = max(acked[shard], seq)  # ...then acknowledged
            for _ in range(rng.randrange(12)):  # quiet spells: looks of one STREAM.INFO
                await asyncio.sleep(0)

    async def reader() -> None:
        nonlocal checked
        log_id = None
        for _ in range(reads):
            asked = rng.sample(range(shards), rng.randrange(1, 3))
            before = dict(acked)
            # A replica tells what it applied: an entry of its shard already in the log, or nothing.
            known: dict[int, tuple[int | None, int]] = {}
            mine = stream.on(asked[0])
            if log_id is not None and mine and rng.random() < 0.7:
                known[asked[0]] = (log_id, rng.choice(mine))
            look = await ends.get(asked, known)
            log_id = look.log_id
            for shard in asked:
                end = look.ends[shard]
                assert end >= before.get(shard, 0), (seed, shard, end, before)  # nothing acknowledged missed
                assert end == 0 or stream.entries[end - 1] == shard  # an entry of the shard
                if shard in known:
                    assert end >= known[shard][1]
                checked += 1
            for _ in range(rng.randrange(8)):
                await asyncio.sleep(0)

    writing = [asyncio.create_task(writer()) for _ in range(writers)]
    await asyncio.gather(*(reader() for _ in range(readers)))
    done.set()
    await asyncio.gather(*writing)
    await ends.close()
    return checked


async def test_a_quiet_stream_costs_one_info_and_a_moving_one_asks_beside_it() -> None:
    stream = Stream()
    for shard in (0, 1, 1):
        stream.write(shard)
    nc = Connection(stream)
    ends = StreamEnds(nc)  # type: ignore[arg-type]
    assert (await ends.get([0, 1])).ends == {0: 1, 1: 3}
    nc.sent.clear()
    for _ in range(3):
        assert (await ends.get([0, 1])).ends == {0: 1, 1: 3}
    assert nc.sent == ["INFO"] * 3  # nothing written: one short request per look
    stream.write(2)
    nc.sent.clear()
    assert (await ends.get([1])).ends == {1: 3}
    # The stream moved (another shard's write): after the info, "anything after 3 on shard 1?" (no).
    assert nc.sent == ["INFO", "MSG"]
    # The last look saw writes: the next asks beside its info; once one sees none, one info again.
    nc.sent.clear()
    assert (await ends.get([1])).ends == {1: 3}
    assert (await ends.get([1])).ends == {1: 3}
    assert sorted(nc.sent) == ["INFO", "INFO", "MSG"]
    # Once a look saw writes, and while they go on, each look sends its question before the info
    # is answered: side by side.
    stream.write(1)
    await ends.get([1])
    for _ in range(3):
        seq = stream.write(1)
        nc.held = asyncio.Queue()
        look = asyncio.create_task(ends.get([1], {1: (None, 3)}))
        # Both out before either is answered.
        first, second = await asyncio.wait_for(nc.held.get(), 5), await asyncio.wait_for(nc.held.get(), 5)
        nc.held = None
        first.set()
        second.set()
        assert (await look).ends == {1: seq}
    # A shard not looked at since the stream moved is asked beside the info too.
    await ends.get([0])
    stream.write(2)
    await ends.get([2])
    await ends.get([2])  # the stream quiet again...
    nc.sent.clear()
    assert (await ends.get([0])).ends == {0: 1}  # ...but shard 0's end is known only through an older last
    assert sorted(nc.sent) == ["INFO", "MSG"]
    await ends.close()


async def test_a_caller_arriving_while_a_look_is_in_flight_gets_the_next_look() -> None:
    stream = Stream()
    stream.write(0)
    nc = Connection(stream)
    ends = StreamEnds(nc)  # type: ignore[arg-type]
    assert (await ends.get([0])).ends == {0: 1}
    nc.held = asyncio.Queue()
    first = asyncio.create_task(ends.get([0]))
    gate = await nc.held.get()  # JetStream handled the look's STREAM.INFO (the log ends at 1)...
    nc.held = None
    seq = stream.write(0)  # ...then a write is stored and acknowledged...
    second = asyncio.create_task(ends.get([0]))  # ...and then the second caller asks.
    await asyncio.sleep(0)
    gate.set()
    assert (await first).ends == {0: 1}  # a right answer for the first caller
    assert (await second).ends == {0: seq}  # not for the second: it gets the next look
    await ends.close()


async def test_a_question_handled_before_the_info_holds_only_through_the_end_seen_before() -> None:
    stream = Stream()
    stream.write(0)
    stream.write(1)
    nc = Connection(stream)
    ends = StreamEnds(nc)  # type: ignore[arg-type]
    assert (await ends.get([0])).ends == {0: 1}  # known through 2
    stream.write(1)
    assert (await ends.get([1])).ends == {1: 3}  # the stream's last is 3 now: shard 0 is behind it
    nc.arriving = asyncio.Queue()
    look = asyncio.create_task(ends.get([0]))
    requests = dict([await nc.arriving.get(), await nc.arriving.get()])  # the info and "after 1 on shard 0?"
    nc.arriving = None
    requests["MSG"].set()  # JetStream handles the question first: nothing after 1...
    await asyncio.sleep(0)
    seq = stream.write(0)  # ...then a write to shard 0 is stored and acknowledged...
    requests["INFO"].set()  # ...then the info: the last sequence is the write's
    assert (await look).ends == {0: 1}  # right for its caller, who asked before the write
    # The question's "nothing after 1" held through 3 (the last sequence seen before it was
    # sent), not through the info's 4: a later caller must find the write, also once the stream
    # is quiet again (another shard's look saw no writes since).
    assert (await ends.get([1])).ends == {1: 3}
    assert (await ends.get([1])).ends == {1: 3}
    assert (await ends.get([0])).ends == {0: seq}
    await ends.close()
