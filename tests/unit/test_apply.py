"""WAL apply on real Kuzu: exactly once, deterministic, poison handling, and the data rules, checked
against an independent in-Python model of the rules."""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import itertools
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kuzu
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SCRATCH_DIR, examples
from torua_node.shard import apply as apply_mod
from torua_node.shard.apply import ApplyResult, apply_batch
from torua_node.shard.wal import (
    WalChunk,
    WalDocument,
    WalEntity,
    WalEntry,
    WalKV,
    WalMention,
    WalRelation,
    encode_entry,
    fingerprint,
)
from torua_node.storage import statements
from torua_node.storage.digest import content_digest, counts
from torua_node.storage.schema import (
    SCHEMA_VERSION,
    init_schema,
    read_applied_seq,
    read_log_position,
    write_log_id,
)
from torua_node.storage.tables import CHUNK, DOCUMENT, ENTITY, STUB

DIM = 4
# Examples per run of the apply properties here and in test_convergence (each builds two databases):
# 15 in `make test` (30 for the split property, which runs in both statement modes), 100 under
# TORUA_HYPOTHESIS_PROFILE=long; TORUA_FUZZ_EXAMPLES=500 pytest ... sets both counts outright.
_FUZZ = os.environ.get("TORUA_FUZZ_EXAMPLES")
APPLY_EXAMPLES = int(_FUZZ or examples(default=15, long=100))
# The base other modules scale their own counts from (test_graphview): 30 as before, 100 when long.
FUZZ_EXAMPLES = int(_FUZZ or examples(default=30, long=100))


# -- helpers (also used by test_reads / test_vectors) ------------------------------------------


@contextmanager
def shard_db(path: Path, dim: int = DIM) -> Iterator[kuzu.Connection]:
    db = kuzu.Database(str(path), buffer_pool_size=128 * 1024 * 1024, max_db_size=1 << 34)
    conn = kuzu.Connection(db)
    try:
        init_schema(conn, dim)
        yield conn
    finally:
        conn.close()
        db.close()


@contextmanager
def temp_db(dim: int = DIM) -> Iterator[kuzu.Connection]:
    """A fresh database in a temporary directory (on /dev/shm when there: tests.conftest.SCRATCH_DIR)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH_DIR) as d, shard_db(Path(d) / "shard.kz", dim) as conn:
        yield conn


def vec(*xs: float, dim: int = DIM) -> bytes:
    return np.resize(np.array(xs, np.float32), dim).astype("<f4").tobytes()


def ent(id_: str, name: str = "", v: bytes | None = None, **kw: Any) -> WalEntity:
    return WalEntity(id=id_, name=name or id_.upper(), type=kw.get("type", "T"),
                     description=kw.get("description", ""), properties=kw.get("properties", "{}"),
                     embedding=v if v is not None else vec(len(id_), 1.0))


def rel(s: str, t: str, ty: str = "R", w: float = 1.0, chunks: list[str] | None = None,
        props: str = "{}") -> WalRelation:
    return WalRelation(source=s, target=t, type=ty, weight=w, properties=props, chunks=chunks or [])


def chunk(id_: str, doc: str, text: str = "txt", pos: int = 0, v: bytes | None = None) -> WalChunk:
    return WalChunk(id=id_, document_id=doc, text=text, position=pos, embedding=v or vec(2.0, float(pos)))


def entry(**kw: Any) -> WalEntry:
    return WalEntry(request_id=kw.pop("request_id", "r"), ts=kw.pop("ts", 1.0), **kw)


def wal(*entries: WalEntry | bytes, start: int = 1) -> list[tuple[int, bytes]]:
    return [(start + i, e if isinstance(e, bytes) else encode_entry(e)) for i, e in enumerate(entries)]


def q(conn: kuzu.Connection, query: str, **params: Any) -> list[list[Any]]:
    return conn.execute(query, params).get_all()


def dump(conn: kuzu.Connection) -> dict[str, Any]:
    """Everything stored, as plain sorted Python values (embeddings as float32 bytes)."""

    return {
        "entities": sorted(tuple(r) for r in q(
            conn, "MATCH (e:Entity) RETURN e.id, e.name, e.type, e.description, e.properties,"
                  " e.embedding, e.stub")),
        "documents": sorted(tuple(r) for r in q(conn, "MATCH (d:Document) RETURN d.id, d.title, d.metadata")),
        "chunks": sorted(tuple(r) for r in q(
            conn, "MATCH (c:Chunk) RETURN c.id, c.document_id, c.text, c.position, c.embedding, c.stub")),
        "relations": sorted((r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5]))) for r in q(
            conn, "MATCH (a)-[r:RELATES]->(b) RETURN a.id, r.type, b.id, r.weight, r.properties, r.chunks")),
        "mentions": sorted(tuple(r) for r in q(conn, "MATCH (c)-[:MENTIONS]->(e) RETURN c.id, e.id")),
        "kv": sorted(tuple(r) for r in q(conn, "MATCH (k:KV) RETURN k.key, k.value")),
        "failures": sorted(r[0] for r in q(conn, "MATCH (f:Failure) RETURN f.seq")),
        "applied_seq": read_applied_seq(conn),
    }


STUB_ENTITY = ("", "", "", "", b"", True)  # name, type, description, properties, embedding, stub


class Model:
    """The apply rules, written independently of the implementation (one entry at a time)."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.ents: dict[str, tuple] = {}
        self.docs: dict[str, tuple] = {}
        self.chunks: dict[str, tuple] = {}
        self.rels: dict[tuple, tuple] = {}
        self.mentions: set[tuple[str, str]] = set()
        self.kv: dict[str, str] = {}
        self.failures: list[int] = []
        self.seq = 0

    def apply(self, seq: int, e: WalEntry | None) -> None:
        if seq <= self.seq:
            return
        self.seq = seq
        if (e is None or any(len(x.embedding) != self.dim * 4 for x in [*e.entities, *e.chunks])
                or not all(math.isfinite(r.weight) for r in e.relations)):
            self.failures.append(seq)
            return
        for i in e.delete_entities:
            self.ents.pop(i, None)
            self.rels = {k: r for k, r in self.rels.items() if i not in (k[0], k[2])}
            self.mentions = {m for m in self.mentions if m[1] != i}
        gone = set(e.delete_documents)
        for d in gone:
            self.docs.pop(d, None)
        dead = {c for c, row in self.chunks.items() if row[0] in gone}
        self.chunks = {c: row for c, row in self.chunks.items() if c not in dead}
        self.mentions = {m for m in self.mentions if m[0] not in dead}
        self._drop_orphans()
        for d in e.documents:
            self.docs[d.id] = (d.title, d.metadata)
        for x in e.entities:
            self.ents[x.id] = (x.name, x.type, x.description, x.properties, x.embedding, False)
        for c in e.chunks:
            self.chunks[c.id] = (c.document_id, c.text, c.position, c.embedding, False)
        for r in e.relations:
            for i in (r.source, r.target):
                self.ents.setdefault(i, STUB_ENTITY)
            self.rels[(r.source, r.type, r.target)] = (r.weight + 0.0, r.properties, tuple(r.chunks))
        for m in e.mentions:
            self.chunks.setdefault(m.chunk_id, (m.document_id, "", 0, b"", True))
            self.ents.setdefault(m.entity_id, STUB_ENTITY)
            self.mentions.add((m.chunk_id, m.entity_id))
        for kv in e.kv:
            if kv.value is None:
                self.kv.pop(kv.key, None)
            else:
                self.kv[kv.key] = kv.value

    def _drop_orphans(self) -> None:
        linked = {i for k in self.rels for i in (k[0], k[2])} | {m[1] for m in self.mentions}
        self.ents = {i: r for i, r in self.ents.items() if not r[5] or i in linked}
        linked_chunks = {m[0] for m in self.mentions}
        self.chunks = {i: r for i, r in self.chunks.items() if not r[4] or i in linked_chunks}

    def dump(self) -> dict[str, Any]:
        return {
            "entities": sorted((i, *r) for i, r in self.ents.items()),
            "documents": sorted((i, *r) for i, r in self.docs.items()),
            "chunks": sorted((i, *r) for i, r in self.chunks.items()),
            "relations": sorted((k[0], k[1], k[2], *r) for k, r in self.rels.items()),
            "mentions": sorted(self.mentions),
            "kv": sorted(self.kv.items()),
            "failures": sorted(self.failures),
            "applied_seq": self.seq,
        }


def model_of(log: list[tuple[int, bytes]], decoded: dict[int, WalEntry | None]) -> Model:
    m = Model()
    for seq, _ in log:
        m.apply(seq, decoded[seq])
    return m


# -- random workloads ----------------------------------------------------------------------------

E_IDS = ["e0", "e1", "e2", "e3", "é4", "e5"]
C_IDS = ["c0", "c1", "c2", "c3"]
D_IDS = ["d0", "d1", "d2"]
# float32 bit patterns: zeros of both signs, subnormal, NaN with payload, infinity, ordinary values
f32_bits = st.sampled_from([0, 0x80000000, 0x3F800000, 0xC0200000, 0x00000001, 0x3DCCCCCD, 0x7F7FFFFF,
                            0x7FC00123, 0x7F800000])
vecs = st.lists(f32_bits, min_size=DIM, max_size=DIM).map(lambda xs: np.array(xs, "<u4").tobytes())
s_ent = st.builds(WalEntity, id=st.sampled_from(E_IDS), name=st.sampled_from(["a", "b", "ü"]),
                  type=st.sampled_from(["P", "Q"]), description=st.sampled_from(["", "x"]),
                  properties=st.sampled_from(["{}", '{"k":1}']), embedding=vecs)
s_doc = st.builds(WalDocument, id=st.sampled_from(D_IDS), title=st.sampled_from(["t", "u"]),
                  metadata=st.sampled_from(["{}", '{"m":2}']))
s_chunk = st.builds(WalChunk, id=st.sampled_from(C_IDS), document_id=st.sampled_from(D_IDS),
                    text=st.sampled_from(["hello", "wörld"]), position=st.integers(-5, 5), embedding=vecs)
s_rel = st.builds(WalRelation, source=st.sampled_from(E_IDS), target=st.sampled_from(E_IDS),
                  type=st.sampled_from(["R", "S"]), weight=st.sampled_from([1.0, 0.5, -0.0, 0.0, 1e-310] * 4 + [float("nan")]),  # NaN: poison
                  properties=st.sampled_from(["{}", '{"p":true}']),
                  chunks=st.lists(st.sampled_from(C_IDS), max_size=2))
s_mention = st.builds(WalMention, chunk_id=st.sampled_from(C_IDS), document_id=st.sampled_from(D_IDS),
                      entity_id=st.sampled_from(E_IDS))
s_kv = st.builds(WalKV, key=st.sampled_from(["k", "ключ", "🔑"]), value=st.none() | st.sampled_from(["v", "w"]))


@st.composite
def s_entry(draw: st.DrawFn) -> WalEntry | bytes:
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return b"\xc1 not msgpack"
    if kind == 1:  # wrong embedding length: poison
        return entry(entities=[WalEntity("e0", "", "", "", "{}", b"\x00" * (DIM * 4 - 4))])
    small = lambda s: st.lists(s, max_size=3)  # noqa: E731
    deletes = kind in (2, 3, 4)
    return entry(
        delete_entities=draw(small(st.sampled_from(E_IDS))) if deletes else [],
        delete_documents=draw(small(st.sampled_from(D_IDS))) if deletes else [],
        documents=draw(small(s_doc)), entities=draw(small(s_ent)), chunks=draw(small(s_chunk)),
        relations=draw(st.lists(s_rel, max_size=5)), mentions=draw(small(s_mention)), kv=draw(small(s_kv)),
    )


def decode_all(entries: list[WalEntry | bytes]) -> tuple[list[tuple[int, bytes]], dict[int, WalEntry | None]]:
    log = wal(*entries)
    return log, {seq: (e if isinstance(e, WalEntry) else None) for (seq, _), e in zip(log, entries)}


def apply_split(conn: kuzu.Connection, log: list[tuple[int, bytes]], cuts: list[int],
                checkpoint: bool = False) -> list[ApplyResult]:
    bounds = [0, *sorted(set(c % (len(log) + 1) for c in cuts)), len(log)]
    results = []
    for a, b in itertools.pairwise(bounds):
        if b > a:
            results.append(apply_batch(conn, log[a:b], DIM))
            if checkpoint:
                conn.execute("CHECKPOINT")
    return results


# -- properties --------------------------------------------------------------------------------------


@settings(max_examples=APPLY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(s_entry(), min_size=1, max_size=12), cuts=st.lists(st.integers(0, 20), max_size=4),
       checkpoint=st.booleans())
def test_any_batch_split_matches_the_model_and_one_by_one(
    no_fallback: None, statement_mode: str, entries: list[WalEntry | bytes], cuts: list[int], checkpoint: bool
) -> None:
    """APPLY_EXAMPLES random logs per statement mode: 15 in `make test`, 100 under
    TORUA_HYPOTHESIS_PROFILE=long (README, "Tests")."""
    log, decoded = decode_all(entries)
    expected = model_of(log, decoded).dump()
    with temp_db() as a, temp_db() as b:
        apply_split(a, log, cuts, checkpoint)
        for item in log:
            apply_batch(b, [item], DIM)
            b.execute("CHECKPOINT")  # on-disk and in-memory versions must read the same
        assert dump(a) == expected
        assert dump(b) == expected
        assert content_digest(a) == content_digest(b)


# -- exactly once ------------------------------------------------------------------------------------


def sample_log() -> list[tuple[int, bytes]]:
    return wal(
        entry(documents=[WalDocument("d1", "Doc", "{}")], chunks=[chunk("c1", "d1"), chunk("c2", "d1", pos=1)],
              entities=[ent("a"), ent("b")], relations=[rel("a", "b"), rel("a", "far")],
              mentions=[WalMention("c1", "d1", "a"), WalMention("c9", "d9", "b")]),
        entry(entities=[ent("far", "Far")], relations=[rel("a", "b", w=2.0)], kv=[WalKV("k", "v")]),
        entry(delete_entities=["b"], kv=[WalKV("k", None), WalKV("k2", "v2")]),
        entry(entities=[ent("b", "B2")], relations=[rel("b", "a", "S")]),
    )


def test_same_batch_twice_applies_once(tmp_path: Path, no_fallback: None) -> None:
    log = sample_log()
    with shard_db(tmp_path / "a") as a, shard_db(tmp_path / "b") as b:
        first = apply_batch(a, log, DIM)
        assert (first.applied, first.applied_seq, first.failures) == (4, 4, [])
        again = apply_batch(a, log, DIM)
        assert (again.applied, again.applied_seq) == (0, 4)
        assert again.entity_ids == [] and again.entities_removed == []
        assert read_applied_seq(a) == 4
        apply_batch(b, log, DIM)
        assert content_digest(a) == content_digest(b)


def test_overlapping_batches_and_restart(tmp_path: Path, no_fallback: None) -> None:
    log = sample_log()
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, log[:3], DIM)
    with shard_db(tmp_path / "a") as a:  # restart: applied_seq survived with the data
        assert read_applied_seq(a) == 3
        r = apply_batch(a, log[1:], DIM)
        assert (r.applied, r.applied_seq) == (1, 4)
        apply_batch(a, log, DIM)  # replay from 0
        got = content_digest(a)
    with shard_db(tmp_path / "once") as once:
        apply_batch(once, log, DIM)
        assert got == content_digest(once)


def test_wiped_replica_rebuilt_by_replay_is_identical(tmp_path: Path, no_fallback: None) -> None:
    log = sample_log()
    with shard_db(tmp_path / "r1") as conn:
        for item in log:
            apply_batch(conn, [item], DIM)
        before, n = content_digest(conn), counts(conn)
    for p in tmp_path.iterdir():
        p.unlink()
    with shard_db(tmp_path / "r1") as conn:
        assert read_applied_seq(conn) == 0
        apply_batch(conn, log, DIM)
        assert content_digest(conn) == before
        assert counts(conn) == n


def test_gaps_in_sequence_and_duplicates_inside_a_batch(tmp_path: Path, no_fallback: None) -> None:
    # Stream sequences are shared by all shards, so one shard sees gaps.
    e1, e2 = encode_entry(entry(kv=[WalKV("k", "1")])), encode_entry(entry(kv=[WalKV("k", "2")]))
    with shard_db(tmp_path / "a") as a:
        r = apply_batch(a, [(10, e1), (10, e1), (17, e2), (12, e1)], DIM)
        assert (r.applied, r.applied_seq) == (2, 17)
        assert q(a, "MATCH (k:KV) RETURN k.value") == [["2"]]


# -- poison -------------------------------------------------------------------------------------------


def test_poison_entries_are_recorded_skipped_and_identical_on_replicas(tmp_path: Path) -> None:
    bad_len = entry(entities=[ent("x", v=b"\x00" * 12)])
    nan = entry(entities=[ent("y")], relations=[rel("a", "y", w=float("nan"))])
    log = wal(entry(entities=[ent("a")]), b"\x93garbage", bad_len, entry(entities=[ent("b")]),
              entry(chunks=[chunk("c", "d", v=b"\x00" * 20)]), nan,
              entry(relations=[rel("a", "b", w=float("inf"))]), entry(relations=[rel("a", "b")]))
    with shard_db(tmp_path / "a") as a, shard_db(tmp_path / "b") as b:
        ra = apply_batch(a, log, DIM)
        assert [s for s, _ in ra.failures] == [2, 3, 5, 6, 7]
        assert "undecodable" in ra.failures[0][1] and "12 bytes" in ra.failures[1][1]
        assert "weight is NaN" in ra.failures[3][1] and "weight" in ra.failures[4][1]
        assert (ra.applied, ra.applied_seq) == (3, 8)
        for item in log:
            apply_batch(b, [item], DIM)
        assert content_digest(a) == content_digest(b)
        assert q(a, "MATCH (f:Failure) RETURN f.seq, f.error ORDER BY f.seq") == [
            [s, e] for s, e in ra.failures]
        assert counts(a)["entities"] == 2 and counts(a)["relations"] == 1 and counts(a)["failures"] == 5
        assert apply_batch(a, log, DIM).failures == []  # a replay does not record them again


def test_a_kuzu_error_rolls_back_the_batch_and_only_that_entry_is_poison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = apply_mod._apply_upserts

    def faulty(conn: kuzu.Connection, seg: Any, delta: Any) -> None:
        real(conn, seg, delta)  # fail after writing, to prove the rollback
        if any(e.name == "BOOM" for _, e in seg.entities.values()):
            raise RuntimeError("Runtime exception: boom")

    monkeypatch.setattr(apply_mod, "_apply_upserts", faulty)
    log = wal(entry(entities=[ent("a")]), entry(entities=[ent("boom", "BOOM")]), entry(entities=[ent("b")]))
    with shard_db(tmp_path / "a") as a, shard_db(tmp_path / "b") as b:
        r = apply_batch(a, log, DIM)
        assert r.failures == [(2, "RuntimeError: Runtime exception: boom")]
        assert (r.applied, r.applied_seq, r.error) == (2, 3, None)
        assert r.entity_ids == ["a", "b"]  # the poison entry's vector never reaches the index
        assert [x[0] for x in q(a, "MATCH (e:Entity) RETURN e.id ORDER BY e.id")] == ["a", "b"]
        for item in log:
            apply_batch(b, [item], DIM)
        assert content_digest(a) == content_digest(b)


def test_a_transient_error_stops_without_poison_and_redelivery_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = apply_mod._apply_upserts
    broken = {"on": True}

    def faulty(conn: kuzu.Connection, seg: Any, delta: Any) -> None:
        if broken["on"] and "c" in seg.entities:
            raise RuntimeError("Buffer manager exception: Unable to allocate memory!")
        real(conn, seg, delta)

    monkeypatch.setattr(apply_mod, "_apply_upserts", faulty)
    log = wal(entry(entities=[ent("a")]), entry(entities=[ent("b")]), entry(delete_entities=["x"]),
              entry(entities=[ent("c")]))
    with shard_db(tmp_path / "a") as a:
        r = apply_batch(a, log, DIM)
        # The first transaction (a, b) committed; the second failed and nothing more was tried in
        # this database (kuzu 0.11.3 may crash using it again): no entry is blamed.
        assert (r.applied, r.applied_seq, r.failures) == (2, 2, [])
        assert r.error is not None and "Buffer manager" in r.error
        assert r.entity_ids == ["a", "b"]
    broken["on"] = False
    with shard_db(tmp_path / "a") as a:  # what the replica does next: reopen, deliver again
        r = apply_batch(a, log, DIM)
        assert (r.applied, r.applied_seq, r.entity_ids) == (2, 4, ["c"])
        assert counts(a)["failures"] == 0 and counts(a)["entities"] == 3


@pytest.mark.parametrize("fault", [
    OSError(28, "No space left on device"),
    MemoryError(),
    pa.ArrowMemoryError("malloc of 64 bytes failed"),
    pa.ArrowIOError("read failed"),
    RuntimeError("Storage exception: page 12 of the node group is not in the file"),
    RuntimeError("Checkpoint exception: could not write the shadow file"),
    RuntimeError("IO exception: Cannot write to file"),
    RuntimeError("an error nobody has seen before"),
], ids=lambda e: type(e).__name__ + ":" + str(e)[:20])
def test_memory_io_and_storage_errors_stop_apply_and_never_skip_an_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    """Only a verdict on the entry itself is skipped: anything that says something about this
    replica (memory, disk, its storage's state, or an error not known to be the entry's) stops the
    batch, and a redelivery applies every entry."""
    real = apply_mod._apply_upserts
    broken = {"on": True}

    def faulty(conn: kuzu.Connection, seg: Any, delta: Any) -> None:
        if broken["on"] and "c" in seg.entities:
            raise fault
        real(conn, seg, delta)

    monkeypatch.setattr(apply_mod, "_apply_upserts", faulty)
    log = wal(entry(entities=[ent("a")]), entry(entities=[ent("b")]), entry(entities=[ent("c")]),
              entry(entities=[ent("d")]))
    with shard_db(tmp_path / "a") as a:
        for _ in range(2):  # retried, it fails the same way, and still skips nothing
            r = apply_batch(a, log, DIM)
            assert r.failures == [] and r.error is not None and type(fault).__name__ in r.error
            assert r.applied_seq < 3 and counts(a)["failures"] == 0
        broken["on"] = False
        r = apply_batch(a, log, DIM)
        assert (r.applied_seq, r.failures, r.error) == (4, [], None)
        assert counts(a)["entities"] == 4 and counts(a)["failures"] == 0


@pytest.mark.parametrize("fault", [
    RuntimeError("Binder exception: Cannot find property nope for n."),
    RuntimeError("Conversion exception: Cast failed."),
    pa.ArrowInvalid("Could not convert 'x' with type str"),
], ids=lambda e: str(e)[:20])
def test_a_verdict_on_the_entry_is_recorded_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    real = apply_mod._apply_upserts

    def faulty(conn: kuzu.Connection, seg: Any, delta: Any) -> None:
        if "c" in seg.entities:
            raise fault
        real(conn, seg, delta)

    monkeypatch.setattr(apply_mod, "_apply_upserts", faulty)
    log = wal(entry(entities=[ent("a")]), entry(entities=[ent("c")]), entry(entities=[ent("d")]))
    with shard_db(tmp_path / "a") as a, shard_db(tmp_path / "b") as b:
        r = apply_batch(a, log, DIM)
        assert [s for s, _ in r.failures] == [2] and (r.applied_seq, r.error) == (3, None)
        for item in log:  # one entry at a time: the same verdict, the same content
            apply_batch(b, [item], DIM)
        assert content_digest(a) == content_digest(b)


def test_the_fingerprint_of_the_last_entry_is_stored_with_applied_seq(tmp_path: Path) -> None:
    log = wal(entry(entities=[ent("a")]), b"\x93garbage", entry(kv=[WalKV("k", "v")]))
    with shard_db(tmp_path / "a") as a, shard_db(tmp_path / "b") as b:
        for n, (seq, raw) in enumerate(log, 1):
            apply_batch(a, log[:n], DIM)
            assert read_log_position(a) == (seq, None, fingerprint(raw))
        apply_batch(b, log, DIM)
        assert read_log_position(b).applied_fp == fingerprint(log[-1][1])
        write_log_id(a, 1_700_000_000_000_000)  # which log is bookkeeping, not content
        assert read_log_position(a).log_id == 1_700_000_000_000_000
        assert content_digest(a) == content_digest(b)


# -- data rules ---------------------------------------------------------------------------------------


def test_entity_upsert_replaces_every_field_and_stub_becomes_real(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(entities=[ent("a", "A", vec(1, 2, 3, 4), properties='{"x":1}')],
                                 relations=[rel("a", "x")])), DIM)
        assert q(a, "MATCH (e:Entity {id:'x'}) RETURN e.stub, e.name, e.embedding") == [[True, "", b""]]
        r = apply_batch(a, wal(entry(entities=[
            ent("a", "A2", vec(5, 6, 7, 8), type="U", description="dd", properties="{}"),
            ent("x", "X", vec(9))]), start=2), DIM)
        assert q(a, "MATCH (e:Entity) RETURN e.id, e.name, e.type, e.description, e.properties,"
                    " e.embedding, e.stub ORDER BY e.id") == [
            ["a", "A2", "U", "dd", "{}", vec(5, 6, 7, 8), False],
            ["x", "X", "T", "", "{}", vec(9), False]]
        assert r.entity_ids == ["a", "x"] and r.entity_vectors.tolist() == [[5, 6, 7, 8], [9] * 4]
        assert counts(a)["relations"] == 1 and counts(a)["stub_entities"] == 0


def test_embeddings_are_stored_bit_exact(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    # -0.0, smallest subnormal, NaN with payload, infinity, ordinary values, zeros
    bits = [0x80000000, 0x00000001, 0x7FC00123, 0x7F800000, 0x3F9E0652, 0, 0, 0]
    raw = np.array(bits, "<u4").tobytes()
    with shard_db(tmp_path / "a", dim=8) as a:
        apply_batch(a, wal(entry(entities=[ent("a", v=raw), ent("b", v=raw)],
                                 chunks=[chunk("c", "d", v=raw)])), 8)
        a.execute("CHECKPOINT")
        apply_batch(a, wal(entry(entities=[ent("a", v=raw[::-1])], chunks=[chunk("c2", "d", v=raw)]),
                           start=2), 8)
        a.execute("CHECKPOINT")
        assert q(a, "MATCH (n:Entity) RETURN n.id, n.embedding ORDER BY n.id") == [["a", raw[::-1]], ["b", raw]]
        assert q(a, "MATCH (n:Chunk) RETURN n.embedding") == [[raw], [raw]]
        from torua_node.storage.reads import get_entity
        got = get_entity(a, "b", embedding=True)
        assert got is not None and np.array(got.embedding, "<f4").view("<u4").tolist() == bits


def test_new_vectors_after_a_vector_update_are_not_corrupted(tmp_path: Path, no_fallback: None) -> None:
    # kuzu 0.11.3 corrupts FLOAT[n] columns here (the updated row's old vector lands in the new row
    # at checkpoint): why embeddings are BLOBs.
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(entities=[ent("e0", v=vec(1, 2, 3, 4))])), DIM)
        a.execute("CHECKPOINT")
        apply_batch(a, wal(entry(entities=[ent("e0", v=vec(5, 6, 7, 8))]), start=2), DIM)
        apply_batch(a, wal(entry(entities=[ent("e1", v=vec(0))], chunks=[chunk("c", "d", v=vec(9))]),
                           start=3), DIM)
        a.execute("CHECKPOINT")
        assert q(a, "MATCH (e:Entity) RETURN e.id, e.embedding ORDER BY e.id") == [
            ["e0", vec(5, 6, 7, 8)], ["e1", vec(0)]]
        assert q(a, "MATCH (c:Chunk) RETURN c.embedding") == [[vec(9)]]


def test_chunk_upsert_and_document_upsert_replace(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(mentions=[WalMention("c", "d1", "e")]),
                           entry(documents=[WalDocument("d2", "T", "{}")], chunks=[chunk("c", "d2", "t1", 3)]),
                           entry(documents=[WalDocument("d2", "T2", '{"a":1}')])), DIM)
        assert q(a, "MATCH (c:Chunk) RETURN c.id, c.document_id, c.text, c.position, c.stub") == [
            ["c", "d2", "t1", 3, False]]
        assert q(a, "MATCH (d:Document) RETURN d.id, d.title, d.metadata") == [["d2", "T2", '{"a":1}']]


def test_relation_upsert_by_source_type_target(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(relations=[rel("a", "b", "R", 1.0, ["c1"])])), DIM)
        apply_batch(a, wal(entry(relations=[rel("a", "b", "R", 2.0, ["c2", "c3"], '{"z":0}'),
                                            rel("a", "b", "S"), rel("b", "a", "R")]), start=2), DIM)
        assert q(a, "MATCH (x)-[r:RELATES]->(y) RETURN x.id, r.type, y.id, r.weight, r.chunks,"
                    " r.properties ORDER BY x.id, r.type") == [
            ["a", "R", "b", 2.0, '["c2","c3"]', '{"z":0}'], ["a", "S", "b", 1.0, "[]", "{}"],
            ["b", "R", "a", 1.0, "[]", "{}"]]


class _Spy:
    """A connection that records every statement apply runs through it."""

    def __init__(self, conn: kuzu.Connection) -> None:
        self.conn, self.database, self.queries = conn, conn.database, []

    def execute(self, query: str, params: dict | None = None) -> Any:
        self.queries.append(query)
        return self.conn.execute(query, params or {})

    @property
    def lookups(self) -> list[str]:
        return [x for x in self.queries if x.startswith("LOAD FROM") and " RETURN " in x]

    @property
    def table_scans(self) -> list[str]:
        """Statements that match a batch of keys (in kuzu 0.11.3 a scan of the whole table)."""
        return [x for x in self.queries if x.startswith("LOAD FROM") and " MATCH " in x]


def test_new_keys_are_written_without_lookups_and_known_ones_are_updated(
    tmp_path: Path, no_fallback: None
) -> None:
    first = entry(entities=[ent("a")], chunks=[chunk("c", "d")], relations=[rel("a", "b")],
                  mentions=[WalMention("c", "d", "a")])
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(first), DIM)
    with shard_db(tmp_path / "a") as a:  # reopened: what exists is learnt from the database
        spy = _Spy(a)
        apply_batch(spy, wal(entry(entities=[ent("x")], chunks=[chunk("cx", "d")],
                                   relations=[rel("x", "y")], mentions=[WalMention("cx", "d", "x")]),
                             start=2), DIM)
        assert spy.lookups == []
        apply_batch(spy, wal(entry(entities=[ent("a", "A2")], relations=[rel("a", "b", w=5.0)],
                                   mentions=[WalMention("c", "d", "a")]), start=3), DIM)
        assert spy.lookups  # all of these may exist: looked up, and updated rather than duplicated
        assert q(a, "MATCH (x)-[r:RELATES]->(y) RETURN x.id, y.id, r.weight ORDER BY x.id") == [
            ["a", "b", 5.0], ["x", "y", 1.0]]
        assert q(a, "MATCH (e:Entity {id: 'a'}) RETURN e.name") == [["A2"]]
        assert counts(a)["mentions"] == 2


def test_few_rows_on_a_large_table_go_row_by_row_and_batches_set_at_a_time(
    tmp_path: Path, no_fallback: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statements, "KEYS_PER_ROW", 4)  # so 40 entities are a large table for <= 10 rows
    chain = [rel(f"e{i}", f"e{i + 1}") for i in range(39)]
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(entities=[ent(f"e{i}") for i in range(40)], relations=chain)), DIM)
        spy = _Spy(a)
        small = entry(entities=[ent("e0", "Renamed")],
                      relations=[rel("e0", "e1", w=7.0), rel("e1", "e0", w=3.0)],
                      mentions=[WalMention("c", "d", "e5")], kv=[WalKV("k", "v")])
        apply_batch(spy, wal(small, start=2), DIM)
        assert spy.lookups == [] and spy.table_scans == []  # updates and edges probed key by key
        assert q(a, "MATCH (e:Entity {id: 'e0'}) RETURN e.name") == [["Renamed"]]
        assert q(a, "MATCH (x)-[r:RELATES]->(y) WHERE x.id IN ['e0', 'e1'] AND y.id IN ['e0', 'e1']"
                    " RETURN x.id, y.id, r.weight ORDER BY x.id") == [["e0", "e1", 7.0], ["e1", "e0", 3.0]]
        spy.queries.clear()
        apply_batch(spy, wal(entry(relations=[rel(f"e{i}", f"e{i + 2}") for i in range(20)]), start=3), DIM)
        assert spy.table_scans  # 20 rows meet 40 keys: one set-at-a-time statement beats 20 probes
        assert counts(a)["relations"] == 39 + 1 + 20 and counts(a)["mentions"] == 1


def test_mentions_are_additive_without_duplicates(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    m = WalMention("c", "d", "e")
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(mentions=[m, m]), entry(mentions=[m, WalMention("c", "d", "f")])), DIM)
        apply_batch(a, wal(entry(mentions=[m]), start=3), DIM)
        assert sorted(q(a, "MATCH (c)-[:MENTIONS]->(e) RETURN c.id, e.id")) == [["c", "e"], ["c", "f"]]
        assert counts(a) | {} == {"entities": 0, "stub_entities": 2, "documents": 0, "chunks": 0,
                                  "stub_chunks": 1, "relations": 0, "mentions": 2, "kv": 0, "failures": 0}


def test_delete_entity_removes_edges_and_orphan_stubs(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(entities=[ent("a"), ent("b")],
                                 relations=[rel("a", "b"), rel("a", "s1"), rel("s2", "a"), rel("b", "s3")],
                                 mentions=[WalMention("sc", "dx", "a"), WalMention("sc2", "dx", "b")])), DIM)
        assert counts(a)["stub_entities"] == 3 and counts(a)["stub_chunks"] == 2
        r = apply_batch(a, wal(entry(delete_entities=["a", "absent"]), start=2), DIM)
        assert r.entities_removed == ["a"]
        assert sorted(x[0] for x in q(a, "MATCH (e:Entity) RETURN e.id")) == ["b", "s3"]
        assert q(a, "MATCH (c:Chunk) RETURN c.id") == [["sc2"]]
        assert q(a, "MATCH (x)-[r:RELATES]->(y) RETURN x.id, y.id") == [["b", "s3"]]
        apply_batch(a, wal(entry(delete_entities=["s3"]), start=3), DIM)  # a stub can be deleted too
        assert q(a, "MATCH (x)-[r:RELATES]->(y) RETURN x.id, y.id") == []


@pytest.mark.parametrize("tracked", [None, 2], ids=["default", "tracking-capped"])
def test_deleting_edges_inserted_since_the_last_checkpoint_does_not_crash(
    tmp_path: Path, no_fallback: None, monkeypatch: pytest.MonkeyPatch, tracked: int | None
) -> None:
    # Found by fuzzing: without the checkpoint apply takes before such deletes, kuzu 0.11.3 dies with
    # SIGSEGV on one of the reads below. With a tiny cap, tracking is dropped after most inserts.
    if tracked is not None:
        monkeypatch.setattr(apply_mod, "_MAX_TRACKED_EDGE_ENDS", tracked)
    steps: list[Any] = [
        [("n2", "n5", "S"), ("n4", "n3", "S"), ("n2", "n0", "S"), ("n5", "n1", "S")], "ckpt", ["n3", "n2"],
        [("n5", "n5", "R"), ("n1", "n2", "R"), ("n4", "n1", "R"), ("n3", "n1", "R"), ("n1", "n2", "S"),
         ("n2", "n0", "R")], ["n0"], "ckpt",
        [("n1", "n4", "S"), ("n1", "n5", "R")], "ckpt",
        [("n3", "n2", "S")], ["n1", "n3"], "ckpt",
        [("n0", "n0", "S"), ("n0", "n5", "R")], ["n0", "n2"], "ckpt",
        [("n2", "n0", "R"), ("n2", "n5", "R")], ["n5"], "ckpt", ["n4", "n1"],
    ]
    with shard_db(tmp_path / "a") as a:
        for seq, step in enumerate(steps, 1):
            if step == "ckpt":
                a.execute("CHECKPOINT")
            elif isinstance(step[0], tuple):
                apply_batch(a, wal(entry(relations=[rel(s_, t, ty) for s_, t, ty in step]), start=seq), DIM)
            else:
                apply_batch(a, wal(entry(delete_entities=step), start=seq), DIM)
            q(a, "MATCH (x)-[r:RELATES]->(y) RETURN x.id, r.type, y.id")
        a.execute("CHECKPOINT")
        assert q(a, "MATCH (x)-[r:RELATES]->(y) RETURN x.id, r.type, y.id") == [["n2", "R", "n0"]]
        assert counts(a)["stub_entities"] == 2


def test_delete_document_cascades_to_chunks_real_and_stub(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(
            entry(documents=[WalDocument("d", "T", "{}"), WalDocument("keep", "K", "{}")],
                  chunks=[chunk("c1", "d"), chunk("c2", "keep")], entities=[ent("e")],
                  mentions=[WalMention("c1", "d", "e"), WalMention("c1", "d", "far"),
                            WalMention("stub", "d", "e"), WalMention("c2", "keep", "far2")])), DIM)
        r = apply_batch(a, wal(entry(delete_documents=["d", "nope"]), start=2), DIM)
        assert sorted(r.chunks_removed) == ["c1", "stub"]
        assert q(a, "MATCH (d:Document) RETURN d.id") == [["keep"]]
        assert q(a, "MATCH (c:Chunk) RETURN c.id") == [["c2"]]
        assert sorted(x[0] for x in q(a, "MATCH (e:Entity) RETURN e.id")) == ["e", "far2"]
        assert q(a, "MATCH (c)-[:MENTIONS]->(e) RETURN c.id, e.id") == [["c2", "far2"]]


def test_delete_then_upsert_in_one_entry_and_vector_changes(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(entities=[ent("a", v=vec(1)), ent("b", v=vec(2))])), DIM)
        r = apply_batch(a, wal(entry(delete_entities=["a", "b"], entities=[ent("a", v=vec(3))]),
                               entry(entities=[ent("c", v=vec(4))]), entry(delete_entities=["c"]), start=2), DIM)
        assert r.entity_ids == ["a"] and r.entity_vectors.tolist() == [[3.0] * 4]
        assert sorted(r.entities_removed) == ["b", "c"]
        assert q(a, "MATCH (e:Entity) RETURN e.id, e.embedding") == [["a", vec(3)]]


def test_kv_put_get_delete_unicode_and_one_mib_value(
    tmp_path: Path, no_fallback: None, statement_mode: str
) -> None:
    big = "".join(chr(c) for c in range(0x20, 0x2FF)) * 1500 + "\U0001F600"
    big = big[: 1024 * 1024]
    keys = ["ключ", "🔑/x y", "k" * 1024]
    with shard_db(tmp_path / "a") as a:
        apply_batch(a, wal(entry(kv=[WalKV(k, big) for k in keys])), DIM)
        from torua_node.storage.reads import kv_get
        assert all(kv_get(a, k) == big for k in keys)
        assert kv_get(a, "absent") is None
        apply_batch(a, wal(entry(kv=[WalKV(keys[0], None), WalKV(keys[1], "small")]), start=2), DIM)
        assert kv_get(a, keys[0]) is None and kv_get(a, keys[1]) == "small" and kv_get(a, keys[2]) == big


def test_schema_is_idempotent_and_refuses_another_dim(tmp_path: Path) -> None:
    with shard_db(tmp_path / "a") as a:
        init_schema(a, DIM)
        assert read_applied_seq(a) == 0
    with pytest.raises(ValueError, match="dim 4, not 8"), shard_db(tmp_path / "a", dim=8):
        pass


@pytest.mark.parametrize("stored", [1, None], ids=["older-version", "before-versioning"])
def test_a_database_of_another_schema_version_is_refused(tmp_path: Path, stored: int | None) -> None:
    # Refused, the replica is rebuilt from the write-ahead log (ReplicaManager) in the current layout.
    with shard_db(tmp_path / "a") as a:
        if stored is None:
            a.execute("MATCH (m:Meta {key: 'schema_version'}) DELETE m")
        else:
            a.execute("MATCH (m:Meta {key: 'schema_version'}) SET m.value = $v", {"v": stored})
    with (pytest.raises(ValueError, match=f"schema version 1, this node uses {SCHEMA_VERSION}"),
          shard_db(tmp_path / "a")):
        pass


def test_digest_changes_with_any_field(tmp_path: Path, no_fallback: None) -> None:
    base = [entry(entities=[ent("a", v=vec(1.0))], relations=[rel("a", "b", w=1.0)], kv=[WalKV("k", "v")])]
    variants = [
        [entry(entities=[ent("a", v=vec(1.0000001))], relations=[rel("a", "b", w=1.0)], kv=[WalKV("k", "v")])],
        [entry(entities=[ent("a", v=vec(1.0))], relations=[rel("a", "b", w=-1.0)], kv=[WalKV("k", "v")])],
        [entry(entities=[ent("a", v=vec(1.0))], relations=[rel("a", "b", w=1.0)], kv=[WalKV("k", "w")])],
        [entry(entities=[ent("a", v=vec(1.0))], relations=[rel("b", "a", w=1.0)], kv=[WalKV("k", "v")])],
    ]
    digests = set()
    for i, entries in enumerate([base, *variants]):
        with shard_db(tmp_path / f"db{i}") as conn:
            apply_batch(conn, wal(*entries), DIM)
            digests.add(content_digest(conn))
    with shard_db(tmp_path / "seq") as conn:  # same content, different applied_seq
        apply_batch(conn, wal(*base, start=5), DIM)
        digests.add(content_digest(conn))
    assert len(digests) == 6


# v2: with the Version and Tombstone tables (schema 3).
DIGEST_V2 = "f8209a70d6607b37cd957cd78d2b77ee76f3b9149055d78b91178e309dc0b0aa"


def test_the_digest_of_given_content_never_changes(tmp_path: Path, no_fallback: None) -> None:
    # Replicas compare digests across node versions: its rows and order are a format (digest.py).
    entries = [
        entry(entities=[ent("a", v=vec(1.0), description="d"), ent("b", v=vec(-0.0))],
              documents=[WalDocument("doc", "T", "{}")], chunks=[chunk("c", "doc", pos=3)],
              relations=[rel("a", "b", w=0.25, chunks=["c"]), rel("b", "zz", ty="S")],
              mentions=[WalMention("c", "doc", "a"), WalMention("c2", "doc2", "b")], kv=[WalKV("k", "v")]),
        b"not an entry",
    ]
    with shard_db(tmp_path / "a") as conn:
        apply_batch(conn, wal(*entries), DIM)
        assert content_digest(conn) == DIGEST_V2


def test_wal_rows_carry_the_columns_of_their_tables() -> None:
    # Apply copies a WAL row's fields into the columns of the same names (all but the stub flag).
    for row, table in ((WalEntity, ENTITY), (WalChunk, CHUNK), (WalDocument, DOCUMENT)):
        assert row.__struct_fields__ == tuple(c for c in table.column_names if c != STUB), table.name
