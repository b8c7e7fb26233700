"""No acknowledged write is ever lost: writers keep writing while nodes are SIGKILLed and restarted,
and no read observes state older than a write acknowledged before the read began (a history
checker, as Jepsen's and Elasticsearch's linearizability checks of single registers)."""

from __future__ import annotations

import asyncio
import bisect
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from torua import Client, NotFound, ToruaError
from torua.hashing import shard_for
from torua.model import Entity, Relation, Tokens
from torua.subjects import WAL_STREAM, wal_subject
from torua.up import LocalCluster

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(300)


def merge_tokens(into: Tokens, more: Tokens) -> None:
    for shard, seq in more.items():
        into[shard] = max(into.get(shard, 0), seq)


async def log_ends(client: Client, num_shards: int) -> dict[int, int]:
    js = client.nc.jetstream()
    ends = {}
    for s in range(num_shards):
        try:
            ends[s] = (await js.get_last_msg(WAL_STREAM, wal_subject(s))).seq or 0
        except Exception:  # noqa: BLE001 - no entry for this shard yet
            ends[s] = 0
    return ends


async def replicas_converged(client: Client) -> dict[int, set[str]] | None:
    """Every replica of every shard applied the whole log and all report the same digest."""
    smap = await client.cluster_shards()
    ends = await log_ends(client, smap.num_shards)
    digests: dict[int, set[str]] = {}
    for entry in smap.shards:
        if len(entry.active) < smap.replication_factor or entry.leaving:
            return None
        seen = set()
        for node in entry.replicas:
            d = await client.node_digest(node, entry.id)
            if d.applied_seq != ends[entry.id]:
                return None
            seen.add(d.digest)
        digests[entry.id] = seen
    return digests


async def writer(
    client: Client,
    wid: int,
    batches: int,
    acked: set[str],
    attempted: set[str],
    tokens: Tokens,
    until: asyncio.Event | None = None,
) -> None:
    """Write `batches` batches, or keep writing until `until` is set (at most `batches` then)."""
    for b in range(batches):
        if until is not None and until.is_set():
            return
        ids = [f"w{wid}-b{b}-e{j}" for j in range(6)]
        attempted.update(ids)
        rels = [Relation(source=a, target=c, type="NEXT") for a, c in zip(ids, ids[1:])]
        try:
            reply = await client.upsert(entities=[Entity(id=i, name=i.upper()) for i in ids], relations=rels)
        except ToruaError:
            continue  # not acknowledged: may or may not be stored, never half-applied per shard
        acked.update(ids)
        merge_tokens(tokens, reply.tokens)


async def chaos(cluster: LocalCluster, client: Client, rounds: int, done: asyncio.Event,
                observed: Callable[[], int] = lambda: 0, per_phase: int = 0) -> None:
    """`rounds` times: SIGKILL a node, restart it once the cluster noticed. With `observed` (a count
    of reads), each phase (a node down; back) lasts until `per_phase` more reads were observed."""
    rng = random.Random(7)

    async def reads_observed(more: int, what: str) -> None:
        target = observed() + more
        await wait_for(lambda: _true(observed() >= target), timeout=60, what=what)

    for _ in range(rounds):
        victim = rng.choice(sorted(cluster.nodes))
        cluster.signal_node(victim, signal.SIGKILL)
        cluster.nodes[victim].wait()

        async def noticed(victim: str = victim) -> bool:
            nodes = {n.id: n.status for n in (await client.cluster_nodes()).nodes}
            return nodes.get(victim) in ("unhealthy", "dead")

        await wait_for(noticed, timeout=15, what=f"{victim} seen down")
        await reads_observed(per_phase, f"reads while {victim} is down")
        cluster.start_node(victim)
        await wait_for(lambda victim=victim: _healthy(client, victim), timeout=30, what=f"{victim} back")
        await reads_observed(per_phase, f"reads after {victim} came back")
    done.set()


async def _true(value: bool) -> bool:
    return value


async def _healthy(client: Client, node: str) -> bool:
    return any(n.id == node and n.status == "healthy" for n in (await client.cluster_nodes()).nodes)


# --- a history of registers: writes acknowledged, reads observed -----------------------------------


@dataclass
class Register:
    """One key written by one writer with the values 1, 2, 3, ... in order."""

    attempted: int = 0  # the highest value ever sent (acknowledged or not)
    acked: list[int] = field(default_factory=list)  # values acknowledged, in order
    acked_at: list[float] = field(default_factory=list)  # monotonic time each acknowledgement arrived


@dataclass(frozen=True)
class Read:
    key: str
    began: float  # monotonic time just before the request was sent
    value: int  # 0: not found


def stale_reads(registers: dict[str, Register], reads: list[Read]) -> list[str]:
    """Reads that saw a value older than one acknowledged before they began, or one never written."""
    problems = []
    for r in reads:
        reg = registers[r.key]
        # The acknowledgements that reached the writer before this read was sent.
        known = bisect.bisect_left(reg.acked_at, r.began)
        floor = reg.acked[known - 1] if known else 0
        if r.value < floor:
            problems.append(f"{r.key}: read {r.value}, began {r.began - reg.acked_at[known - 1]:.3f}s after {floor} was acknowledged")
        if r.value > reg.attempted:
            problems.append(f"{r.key}: read {r.value}, never written (highest sent {reg.attempted})")
    return problems


def test_the_history_checker_finds_stale_and_invented_reads() -> None:
    reg = Register(attempted=3, acked=[1, 2], acked_at=[1.0, 2.0])
    fine = [Read("k", 0.5, 0), Read("k", 1.5, 1), Read("k", 1.5, 3), Read("k", 2.5, 2), Read("k", 2.5, 3)]
    assert stale_reads({"k": reg}, fine) == []
    bad = [Read("k", 2.5, 1), Read("k", 1.5, 0), Read("k", 0.5, 4)]
    assert len(stale_reads({"k": reg}, bad)) == 3


async def register_writer(client: Client, key: str, reg: Register, kind: str, stop: asyncio.Event) -> None:
    """Writes 1, 2, 3, ... to `key` (a kv key, or an entity's name), one after another."""
    while not stop.is_set():
        reg.attempted += 1
        value = reg.attempted
        try:
            if kind == "kv":
                await client.kv_put(key, str(value))
            else:
                await client.upsert(entities=[Entity(id=key, name=str(value))])
        except ToruaError:
            continue  # not acknowledged: it may or may not be stored
        reg.acked.append(value)
        reg.acked_at.append(time.monotonic())


async def register_reader(client: Client, keys: dict[str, str], reads: list[Read], failed: list[str],
                          stop: asyncio.Event, seed: int) -> None:
    """Strong reads (the default, no tokens) of random registers, on a connection of its own."""
    rng = random.Random(seed)
    while not stop.is_set():
        key = rng.choice(sorted(keys))
        began = time.monotonic()
        try:
            if keys[key] == "kv":
                value = int(await client.kv_get(key))
            else:
                value = int((await client.get(key)).entity.name)
        except NotFound:
            value = 0
        except ToruaError as exc:
            failed.append(f"{key}: {exc.code}")  # unavailable during a kill: no observation
            continue
        reads.append(Read(key, began, value))


async def test_no_acknowledged_write_lost_while_nodes_are_killed(cluster: LocalCluster, client: Client) -> None:
    await client.wait_for_state("green", timeout=30)
    acked: set[str] = set()
    attempted: set[str] = set()
    tokens: Tokens = {}
    done = asyncio.Event()
    # Registers on every shard (kv keys and entities), read by another connection while nodes die.
    keys = {f"reg-kv-{i}": "kv" for i in range(4)} | {f"reg-entity-{i}": "entity" for i in range(4)}
    registers = {k: Register() for k in keys}
    reads: list[Read] = []
    read_failures: list[str] = []
    readers_client = await Client.connect(cluster.url, request_timeout=5.0)
    history = [
        *(asyncio.create_task(register_writer(client, k, registers[k], kind, done)) for k, kind in keys.items()),
        *(asyncio.create_task(register_reader(readers_client, keys, reads, read_failures, done, s)) for s in range(2)),
    ]
    try:
        chaos_task = asyncio.create_task(
            chaos(cluster, client, rounds=3, done=done, observed=lambda: len(reads), per_phase=10)
        )
        writers = [asyncio.create_task(writer(client, w, 5000, acked, attempted, tokens, until=done)) for w in range(3)]
        await asyncio.gather(*writers)
        await chaos_task
        await asyncio.gather(*history)
    finally:
        done.set()
        await asyncio.gather(*history, return_exceptions=True)
        await readers_client.close()
    print(f"acknowledged {len(acked)} of {len(attempted)} entities written during 3 kill/restart rounds; "
          f"{len(reads)} register reads observed, {len(read_failures)} failed, "
          f"{sum(len(r.acked) for r in registers.values())} register writes acknowledged")
    # No read saw state older than a write acknowledged before it began.
    assert stale_reads(registers, reads) == []
    assert len(reads) >= 60 and all(r.acked for r in registers.values())
    # A second wave after the last restart, so writes land while replicas catch up too.
    await asyncio.gather(*(writer(client, 10 + w, 5, acked, attempted, tokens) for w in range(3)))

    assert len(acked) >= 0.8 * len(attempted)
    await client.wait_for_state("green", timeout=60)
    digests = await wait_for(lambda: replicas_converged(client), timeout=90, what="replicas converged")
    assert all(len(d) == 1 for d in digests.values()), digests
    for entity_id in sorted(acked):
        got = await client.get(entity_id, after=tokens)
        assert got.entity.name == entity_id.upper()
    # Every register holds at least its last acknowledged value (never more than was sent).
    final = [
        Read(k, time.monotonic(), int(await client.kv_get(k) if kind == "kv" else (await client.get(k)).entity.name))
        for k, kind in keys.items()
    ]
    assert stale_reads(registers, final) == []
    # 0 duplicated: each shard holds exactly the distinct ids that were stored, nothing twice.
    smap = await client.cluster_shards()
    stored = Counter()
    for entry in smap.shards:
        info = await client.node_info(entry.replicas[0])
        replica = next(r for r in info.replicas if r["shard"] == entry.id)
        stored[entry.id] = replica["counts"]["entities"]
    entity_registers = [k for k, kind in keys.items() if kind == "entity"]  # each acknowledged (asserted above)
    expected_max = Counter(shard_for(i, smap.num_shards) for i in [*attempted, *entity_registers])
    expected_min = Counter(shard_for(i, smap.num_shards) for i in [*acked, *entity_registers])
    for s in range(smap.num_shards):
        assert expected_min[s] <= stored[s] <= expected_max[s], (s, stored[s], expected_min[s], expected_max[s])


def corrupt(shards_dir) -> None:
    """Garbage over every database file: what a crash can leave that Kuzu cannot open."""
    for f in shards_dir.rglob("graph.kuzu*"):
        if f.is_file():
            f.write_bytes(b"\x00not a kuzu database\xff" * 64)


@pytest.mark.parametrize("damage", ["wipe", "corrupt"])
async def test_lost_or_corrupt_replica_rebuilds_from_the_log_to_the_same_digest(
    cluster: LocalCluster, client: Client, damage: str
) -> None:
    await client.wait_for_state("green", timeout=30)
    tokens: Tokens = {}
    for b in range(5):
        ids = [f"wipe-{b}-{j}" for j in range(20)]
        reply = await client.upsert(
            entities=[Entity(id=i, name=i, description="x" * b) for i in ids],
            relations=[Relation(source=a, target=c) for a, c in zip(ids, ids[1:])],
        )
        merge_tokens(tokens, reply.tokens)
    before = await wait_for(lambda: replicas_converged(client), timeout=60, what="converged before wipe")
    # Stop node-1 keeping its assignments (SIGINT), wipe or corrupt its databases, start it again.
    cluster.signal_node("node-1", signal.SIGINT)
    assert cluster.nodes["node-1"].wait(timeout=30) == 0
    shards_dir = cluster.opts.data_dir / "node-1" / "shards"
    if damage == "wipe":
        shutil.rmtree(shards_dir)
    else:
        corrupt(shards_dir)
    cluster.start_node("node-1")
    after = await wait_for(lambda: replicas_converged(client), timeout=90, what="converged after rebuild")
    assert after == before
