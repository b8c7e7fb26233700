"""The in-memory chunk view (storage/chunkview.py), kept in step with apply, answers exactly what Kuzu
answers for chunk rows by id and for the chunks mentioning entities: differential, on real Kuzu,
after every batch of random writes (mentions, chunks, documents and entities written and deleted,
versions out of order), after the entry-by-entry fallback, and equal to a view rebuilt from the
database."""

from __future__ import annotations

import contextlib
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import itertools
import tempfile
from pathlib import Path
from typing import Any

import kuzu
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SCRATCH_DIR
from tests.unit.test_apply import C_IDS, DIM, E_IDS, chunk, ent, entry, temp_db, wal
from tests.unit.test_convergence import v
from tests.unit.test_graphview import BOOM, EXAMPLES, Replica, fail_marked_entries, s_edge_query, s_write
from tests.unit.test_graphview import assert_same_answers as assert_same_graph
from torua_node.shard.apply import apply_batch
from torua_node.shard.wal import WalDocument, WalEntry, WalMention
from torua_node.storage.chunks import ChunkOut, Mention
from torua_node.storage.chunkview import ChunkView, load_chunk_view
from torua_node.storage.digest import content_digest
from torua_node.storage.graphview import GraphView, load_graph_view

CHUNK_IDS = [*C_IDS, "absent"]
ENTITY_IDS = [*E_IDS, "absent"]


# What the shard read from Kuzu before the view: the reference the view must equal. Mentions are a
# set (shard/apply.py), and so are the view's; Kuzu may hold one twice (apply's check for an existing
# edge reads in its transaction, where kuzu 0.11.3 can miss one), so the reference reads them distinct.
def kuzu_chunks(conn: kuzu.Connection, ids: list[str]) -> list[ChunkOut]:
    rows = conn.execute(
        "UNWIND $ids AS i MATCH (c:Chunk {id: i}) WHERE NOT c.stub OPTIONAL MATCH (c)-[:MENTIONS]->(e:Entity)"
        " RETURN c.id, c.document_id, c.text, c.position, collect(DISTINCT e.id)", {"ids": sorted(set(ids))}).get_all()
    return sorted((ChunkOut(id=i, document_id=d, text=t or "", position=p or 0,
                            entities=sorted(e for e in es or () if e is not None)) for i, d, t, p, es in rows),
                  key=lambda c: c.id)


def kuzu_mentions(conn: kuzu.Connection, entity_ids: list[str], limit: int) -> list[Mention]:
    rows = conn.execute(
        "UNWIND $ids AS i MATCH (c:Chunk)-[:MENTIONS]->(e:Entity {id: i}) RETURN DISTINCT c.id, c.document_id, e.id",
        {"ids": sorted(set(entity_ids))}).get_all()
    return [Mention(chunk_id=c, document_id=d, entity_id=e) for c, d, e in sorted(rows, key=lambda r: (r[2], r[0]))
            ][:max(limit, 0)]


def assert_same_answers(view: ChunkView, conn: kuzu.Connection) -> None:
    assert view.contents() == load_chunk_view(conn).contents()  # rebuilt from the database: the same
    for ids in (CHUNK_IDS, [*CHUNK_IDS[::-1], *CHUNK_IDS], [], *([i] for i in CHUNK_IDS)):
        assert view.chunks_by_ids(ids) == kuzu_chunks(conn, ids), ids
    for ids, limit in itertools.product((ENTITY_IDS, [*ENTITY_IDS[::-1], "e0"], [], *([i] for i in ENTITY_IDS)),
                                        (0, 1, 3, 100)):
        assert view.mentions_of(ids, limit) == kuzu_mentions(conn, ids, limit), (ids, limit)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    writes=st.lists(s_write(), min_size=1, max_size=10),
    cuts=st.lists(st.integers(0, 10), max_size=2),
    queries=st.lists(s_edge_query(), min_size=1, max_size=2),
)
def test_the_maintained_views_answer_what_kuzu_answers_after_every_batch(
    writes: list[WalEntry], cuts: list[int], queries: list[tuple[list[str], Any, Any, int]]
) -> None:
    """The graph view (storage/graphview.py) and the chunk view, each after every batch."""
    log = wal(*writes)
    bounds = sorted({0, len(log), *(c % (len(log) + 1) for c in cuts)})
    graph, chunks = GraphView(), ChunkView()
    with temp_db() as conn:
        for lo, hi in itertools.pairwise(bounds):
            result = apply_batch(conn, log[lo:hi], DIM)
            assert result.error is None
            result.update_graph(graph)
            result.update_chunks(chunks)
            assert_same_graph(graph, conn, queries)
            assert_same_answers(chunks, conn)


def test_each_way_mentions_change_reaches_the_view() -> None:
    # The property above, spelled out: mentions written (of a local chunk and of another shard's,
    # a stub), a chunk's document changed, an entity deleted, a document deleted.
    view = ChunkView()
    with temp_db() as conn:
        seq = [0]

        def step(*entries: WalEntry) -> None:
            for s, raw in wal(*entries, start=seq[0] + 1):
                result = apply_batch(conn, [(s, raw)], DIM)
                assert result.error is None and not result.failures
                result.update_chunks(view)
                seq[0] = s

        step(entry(version=v(1), documents=[WalDocument("d", "D", "{}")], entities=[ent("a"), ent("b")],
                   chunks=[chunk("c1", "d", "one", 0), chunk("c2", "d", "two", 1)],
                   mentions=[WalMention("c1", "d", "a"), WalMention("c1", "d", "b"), WalMention("c2", "d", "a"),
                             WalMention("far", "d9", "b")]))
        assert [(c.id, c.text, c.position, c.entities) for c in view.chunks_by_ids(["c2", "c1", "far", "c1"])] == [
            ("c1", "one", 0, ["a", "b"]), ("c2", "two", 1, ["a"])]  # the stub chunk "far" is no row
        assert [(m.entity_id, m.chunk_id, m.document_id) for m in view.mentions_of(["b", "a", "zz"], 10)] == [
            ("a", "c1", "d"), ("a", "c2", "d"), ("b", "c1", "d"), ("b", "far", "d9")]
        assert [(m.entity_id, m.chunk_id) for m in view.mentions_of(["b", "a"], 3)] == [
            ("a", "c1"), ("a", "c2"), ("b", "c1")]
        step(entry(version=v(2), chunks=[chunk("c2", "d2", "two", 1)]))  # moved to another document
        assert [(m.chunk_id, m.document_id) for m in view.mentions_of(["a"], 10)] == [("c1", "d"), ("c2", "d2")]
        step(entry(version=v(3), delete_entities=["b"]))  # its mentions go, and the stub chunk with them
        assert [m.chunk_id for m in view.mentions_of(["b"], 10)] == [] and view.chunks_by_ids(["c1"])[0].entities == ["a"]
        step(entry(version=v(4), delete_documents=["d"]))  # c1 goes with its mentions; c2 is d2's now
        assert [m.chunk_id for m in view.mentions_of(["a"], 10)] == ["c2"]
        assert [c.id for c in view.chunks_by_ids(["c1", "c2"])] == ["c2"]
        assert_same_answers(view, conn)


def test_a_view_loaded_at_open_holds_every_real_chunk_and_mention() -> None:
    with temp_db() as conn:
        apply_batch(conn, wal(entry(chunks=[chunk(i, "d0", f"text {i}", n) for n, i in enumerate(C_IDS)],
                                    mentions=[WalMention(C_IDS[0], "d0", "e0"), WalMention("far", "d1", "e1")])), DIM)
        view = load_chunk_view(conn)
        rows, mentioned = view.contents()
        assert sorted(rows) == C_IDS and sorted(mentioned) == [C_IDS[0], "far"]
        assert_same_answers(view, conn)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(s_write(), st.integers(0, 4)), min_size=2, max_size=10),
       cuts=st.lists(st.integers(0, 10), max_size=2))
def test_after_the_entry_by_entry_fallback_the_views_answer_what_kuzu_answers(
    monkeypatch: pytest.MonkeyPatch, writes: list[tuple[WalEntry, int]], cuts: list[int]
) -> None:
    """The graph and chunk views after batches whose transaction failed on one entry (rolled back,
    then applied entry by entry, the failing one skipped), deletes among them: the same as Kuzu after
    every batch, and at the end the same views and content as a replica that applied the log one
    entry at a time (so nothing but the failing entries was skipped)."""
    fail_marked_entries(monkeypatch)
    log = wal(*(msgspec.structs.replace(e, request_id=BOOM) if mark == 0 else e for e, mark in writes))
    bounds = sorted({0, len(log), *(c % (len(log) + 1) for c in cuts)})
    with tempfile.TemporaryDirectory(dir=SCRATCH_DIR) as d, contextlib.ExitStack() as stack:
        batched, alone = Replica(Path(d) / "a"), Replica(Path(d) / "b")
        stack.callback(batched.close)
        stack.callback(alone.close)
        for lo, hi in itertools.pairwise(bounds):
            batched.apply(log[lo:hi])
            assert_same_answers(batched.chunks, batched.conn)
            assert_same_graph(batched.view, batched.conn, [])
        for item in log:
            alone.apply([item])
        assert batched.chunks.contents() == alone.chunks.contents() == load_chunk_view(alone.conn).contents()
        assert batched.view.contents() == alone.view.contents() == load_graph_view(alone.conn).contents()
        assert content_digest(batched.conn) == content_digest(alone.conn)

