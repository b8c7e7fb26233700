"""The in-memory graph view (storage/graphview.py), kept in step with apply, answers exactly what
storage/reads.py answers from Kuzu: differential, on real Kuzu, after every batch of random writes
(upserts and deletes of every kind, versions out of order; the properties, which check the chunk
view too, are in test_chunkview.py), and equal to a view rebuilt from the database."""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import itertools
from pathlib import Path
from typing import Any

import kuzu
import pytest
from hypothesis import strategies as st

from tests.unit.test_apply import (
    C_IDS,
    D_IDS,
    DIM,
    E_IDS,
    FUZZ_EXAMPLES,
    ent,
    entry,
    rel,
    s_chunk,
    s_doc,
    s_ent,
    s_mention,
    s_rel,
    temp_db,
    wal,
)
from tests.unit.test_convergence import key, v
from torua_node.shard import apply as apply_mod
from torua_node.shard.apply import apply_batch
from torua_node.shard.wal import WalEntry
from torua_node.storage import reads
from torua_node.storage.chunkview import ChunkView
from torua_node.storage.graphview import GraphView, load_graph_view
from torua_node.storage.schema import init_schema

IDS = [*E_IDS, "absent"]
# Each Kuzu read costs milliseconds: a third of the other fuzz tests' examples keeps this one ~10 s.
EXAMPLES = max(1, FUZZ_EXAMPLES // 3)
DIRECTIONS = ("out", "in", "both")
TYPES = st.sampled_from([None, [], ["R"], ["S"], ["R", "S"], ["S", "X"]])

# Writes of a few hot relations and entities collide often: upserts losing to newer writes and deletes.
HOT = st.sampled_from(E_IDS[:3])
s_hot_rel = st.builds(
    rel,
    HOT,
    HOT,
    st.sampled_from(["R", "S"]),
    st.sampled_from([1.0, 0.5, -0.0, 2.0]),
    st.lists(st.sampled_from(C_IDS), max_size=2),
    st.sampled_from(["{}", '{"p":1}']),
)
s_key = st.builds(key, HOT, HOT, st.sampled_from(["R", "S"]))


@st.composite
def s_write(draw: st.DrawFn) -> WalEntry:
    """One entry of any kind; its version drawn from a few (ties and any order), or none (it then
    takes its log position: older than every versioned write)."""
    n = draw(st.integers(0, 6))
    deletes = draw(st.integers(0, 3)) == 0
    small = lambda s: st.lists(s, max_size=3)  # noqa: E731
    return entry(
        version=v(n) if n else 0,
        delete_entities=draw(small(HOT)) if deletes else [],
        delete_documents=draw(small(st.sampled_from(D_IDS))) if deletes else [],
        delete_relations=draw(small(s_key)) if deletes else [],
        documents=draw(small(s_doc)),
        entities=draw(small(s_ent)),
        chunks=draw(small(s_chunk)),
        relations=draw(st.lists(s_rel | s_hot_rel, max_size=5)),  # a NaN weight makes the entry poison
        mentions=draw(small(s_mention)),
    )


@st.composite
def s_edge_query(draw: st.DrawFn) -> tuple[list[str], Any, Any, int]:
    ids = draw(st.lists(st.sampled_from(IDS), min_size=0, max_size=5))
    return ids, draw(st.sampled_from(DIRECTIONS)), draw(TYPES), draw(st.sampled_from([0, 1, 2, 3, 5, 100]))


def assert_same_answers(
    view: GraphView, conn: kuzu.Connection, queries: list[tuple[list[str], Any, Any, int]]
) -> None:
    assert view.contents() == load_graph_view(conn).contents()  # rebuilt from the database: the same
    for i in IDS:
        assert view.get(i) == reads.get_entity(conn, i), i
    for ids in (IDS, [*IDS[::-1], *IDS], []):
        assert view.entities_by_ids(ids) == reads.entities_by_ids(conn, ids)
    fixed = [([i], d, None, 100) for i, d in itertools.product(IDS, DIRECTIONS)]  # every id, whole
    fixed += [(IDS, d, ["R"], 2) for d in DIRECTIONS]  # all at once: de-duplicated, filtered, limited
    for ids, direction, types, limit in [*fixed, *queries]:
        got = view.edges(ids, direction, types, limit)
        assert got == reads.edges(conn, ids, direction, types, limit), (ids, direction, types, limit)


def test_cascades_of_deletes_and_stubs_reach_the_view() -> None:
    # The same rules as the property above, spelled out: a stub becoming real, a real entity deleted
    # while a newer relation keeps it (a stub again), relation deletes, chunks replaced.
    view = GraphView()
    with temp_db() as conn:

        def step(*entries: WalEntry) -> None:
            for seq, raw in wal(*entries, start=reads_seq[0] + 1):
                result = apply_batch(conn, [(seq, raw)], DIM)
                assert result.error is None and not result.failures
                result.update_graph(view)
                reads_seq[0] = seq

        reads_seq = [0]
        step(entry(version=v(1), relations=[rel("a", "b", chunks=["c0"]), rel("b", "c", "S")]))
        assert view.get("b") is None and [e.target for e in view.edges(["a"], "out", None, 10)] == ["b"]
        step(entry(version=v(2), entities=[ent("b", "Bob")]))  # the stub becomes real
        assert view.get("b") == reads.get_entity(conn, "b") is not None
        step(entry(version=v(4), relations=[rel("b", "a", chunks=["c1", "c2"])]))
        step(entry(version=v(3), delete_entities=["b"]))  # older relations go, b-R->a (v4) keeps b a stub
        assert view.get("b") is None
        assert [(e.source, e.target, e.chunks) for e in view.edges(["b"], "both", None, 10)] == [
            ("b", "a", ["c1", "c2"])
        ]
        step(entry(version=v(5), relations=[rel("b", "a", chunks=["c3"])]))  # chunks replaced
        assert view.edges(["a"], "in", None, 10)[0].chunks == ["c3"]
        step(entry(version=v(6), delete_relations=[key("b", "a")]))
        assert view.edges(["a", "b"], "both", None, 10) == []
        assert view.contents() == load_graph_view(conn).contents() == ({}, {})
        assert_same_answers(view, conn, [])


def test_a_view_loaded_at_open_holds_every_real_entity_and_edge() -> None:
    with temp_db() as conn:
        apply_batch(
            conn,
            wal(entry(entities=[ent(i) for i in C_IDS], relations=[rel(C_IDS[0], "far", "R", 0.5)])),
            DIM,
        )
        view = load_graph_view(conn)
        assert view.entity_count == len(C_IDS) and view.relation_count == 1
        assert_same_answers(view, conn, [(C_IDS, "both", None, 10)])


# --- the entry-by-entry fallback ------------------------------------------------------------------

BOOM = "boom"  # the request id of entries that fail in their transaction (a verdict on the entry)


def fail_marked_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every transaction reaching an entry with request id BOOM fails there, with a verdict on the
    entry (a Kuzu runtime error), after the entries before it (and the entry's own deletes) wrote:
    the batch's transaction is rolled back, its entries are retried one per transaction, and the
    marked one fails again, alone, and is skipped."""
    real = apply_mod._Upserts.add

    def add(seg: Any, e: WalEntry, version: int) -> None:
        if e.request_id == BOOM:
            raise RuntimeError("Runtime exception: boom")
        real(seg, e, version)

    monkeypatch.setattr(apply_mod._Upserts, "add", add)


class Replica:
    """A database with its graph and chunk views, applied to as a replica does: a batch that stops
    early (`ApplyResult.error`) is delivered again, from its position, to the database reopened."""

    def __init__(self, path: Path) -> None:
        self.path, self.view, self.chunks = path, GraphView(), ChunkView()
        self._open()

    def _open(self) -> None:
        self.db = kuzu.Database(str(self.path), buffer_pool_size=128 * 1024 * 1024, max_db_size=1 << 34)
        self.conn = kuzu.Connection(self.db)
        init_schema(self.conn, DIM)

    def close(self) -> None:
        self.conn.close()
        self.db.close()

    def apply(self, batch: list[tuple[int, bytes]]) -> None:
        for _ in range(len(batch) + 1):  # each delivery applies at least one more entry
            result = apply_batch(self.conn, batch, DIM)
            result.update_graph(self.view)
            result.update_chunks(self.chunks)
            if result.error is None:
                return
            batch = [(seq, raw) for seq, raw in batch if seq > result.applied_seq]
            self.close()
            self._open()
        raise AssertionError(f"no progress applying {batch[0][0]}: {result.error}")


def test_a_delete_retried_alone_after_a_failed_batch_reaches_the_view(monkeypatch: pytest.MonkeyPatch) -> None:
    # The property above, spelled out: an edge deleted in a batch that fails on a later entry is
    # gone from the view once the batch was applied entry by entry.
    fail_marked_entries(monkeypatch)
    view = GraphView()
    with temp_db() as conn:
        apply_batch(conn, wal(entry(version=v(1), relations=[rel("a", "b"), rel("b", "c")])), DIM).update_graph(view)
        result = apply_batch(conn, wal(
            entry(version=v(2), delete_relations=[key("a", "b")]),
            entry(version=v(3), relations=[rel("c", "a")]),
            entry(version=v(4), request_id=BOOM, relations=[rel("c", "b")]),
            entry(version=v(5), relations=[rel("a", "c", "S")]),
            start=2), DIM)
        assert [seq for seq, _ in result.failures] == [4] and (result.applied_seq, result.error) == (5, None)
        result.update_graph(view)
        assert sorted(view.contents()[1]) == [("a", "S", "c"), ("b", "R", "c"), ("c", "R", "a")]
        assert_same_answers(view, conn, [])
