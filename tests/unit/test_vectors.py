"""Exact in-memory vector search: against a brute-force NumPy reference, growth, removal, compaction,
and the rebuild from Kuzu matching what apply reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.unit.test_apply import DIM, chunk, ent, entry, shard_db, vec, wal
from torua_node.shard.apply import apply_batch
from torua_node.shard.wal import WalDocument, WalMention, WalRelation
from torua_node.storage.textindex import TextIndex, load_text_indexes
from torua_node.storage.vectors import VectorIndex, load_indexes


def reference(ids: list[str], m: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """Cosine similarity in float64; zero vectors score 0."""
    m64, q64 = m.astype(np.float64), q.astype(np.float64)
    norms = np.linalg.norm(m64, axis=1) * np.linalg.norm(q64)
    with np.errstate(all="ignore"):
        s = np.where(norms > 0, (m64 @ q64) / np.where(norms > 0, norms, 1), 0.0)
    return dict(zip(ids, s.tolist()))


def check_topk(got: list[tuple[str, float]], ref: dict[str, float], k: int) -> None:
    assert len(got) == min(k, len(ref))
    want = sorted(ref.values(), reverse=True)[:k]
    assert [s for _, s in got] == pytest.approx(want, abs=1e-5)
    for i, s in got:
        assert s == pytest.approx(ref[i], abs=1e-5)  # each hit really has that score
    assert len({i for i, _ in got}) == len(got)
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)


small_floats = st.floats(-4, 4, width=32, allow_subnormal=False) | st.sampled_from([0.0])


@settings(max_examples=200, deadline=None)
@given(
    m=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.just(5)), elements=small_floats),
    q=hnp.arrays(np.float32, (5,), elements=small_floats),
    k=st.integers(1, 50),
    removed=st.sets(st.integers(0, 39), max_size=10),
)
def test_top_k_equals_brute_force(m: np.ndarray, q: np.ndarray, k: int, removed: set[int]) -> None:
    ids = [f"id{i:03d}" for i in range(len(m))]
    index = VectorIndex(5, capacity=2)  # grows several times
    index.upsert(ids, m)
    index.remove([ids[i] for i in removed if i < len(ids)])
    keep = [i for i in range(len(ids)) if i not in removed]
    assert len(index) == len(keep)
    ref = reference([ids[i] for i in keep], m[keep], q)
    check_topk(index.search(q, k), ref, k)


def test_ties_are_broken_by_id_and_results_are_deterministic() -> None:
    index = VectorIndex(3)
    ids = ["b", "a", "d", "c", "e"]
    index.upsert(ids, np.array([[1, 0, 0], [2, 0, 0], [0, 1, 0], [5, 0, 0], [0, 0, 0]], np.float32))
    assert index.search(np.array([1, 0, 0]), 3) == [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    # The tie crosses the k boundary: the smallest ids win, not the storage order.
    assert [i for i, _ in index.search(np.array([1, 0, 0]), 2)] == ["a", "b"]
    assert [i for i, _ in index.search(np.array([0, 0, 1]), 5)] == ["a", "b", "c", "d", "e"]


def test_zero_and_non_finite_vectors_score_zero_never_nan() -> None:
    index = VectorIndex(2)
    index.upsert(["z", "n", "x"], np.array([[0, 0], [np.nan, 1], [1, 0]], np.float32))
    hits = index.search(np.array([1.0, 0.0]), 3)
    assert hits == [("x", 1.0), ("n", 0.0), ("z", 0.0)]
    assert all(s == 0.0 for _, s in index.search(np.zeros(2), 3))
    assert all(not np.isnan(s) for _, s in index.search(np.array([np.inf, 1.0]), 3))


def test_upsert_replaces_and_last_duplicate_wins() -> None:
    index = VectorIndex(2)
    index.upsert(["a", "b"], np.array([[1, 0], [0, 1]], np.float32))
    index.upsert(["a", "a"], np.array([[0, 1], [-1, 0]], np.float32))
    assert len(index) == 2
    assert index.search(np.array([-1.0, 0.0]), 1) == [("a", 1.0)]
    assert index.search(np.array([0.0, 1.0]), 1) == [("b", 1.0)]


def test_growth_removal_and_compaction_keep_results_exact() -> None:
    rng = np.random.default_rng(7)
    index = VectorIndex(8, capacity=1)
    live: dict[str, np.ndarray] = {}
    for _step in range(30):
        ids = [f"v{rng.integers(0, 3000)}" for _ in range(200)]
        m = rng.standard_normal((200, 8)).astype(np.float32)
        index.upsert(ids, m)
        live.update(zip(ids, m))
        gone = [i for i in list(live) if rng.random() < 0.3]
        index.remove([*gone, "never-there"])
        for i in gone:
            del live[i]
        assert len(index) == len(live)
        q = rng.standard_normal(8).astype(np.float32)
        ref = reference(list(live), np.array(list(live.values())), q)
        check_topk(index.search(q, 10), ref, 10)
    index.remove(list(live))
    assert len(index) == 0 and index.search(np.ones(8), 5) == []


def test_k_edge_cases_and_bad_query_shape() -> None:
    index = VectorIndex(2)
    assert index.search(np.ones(2), 5) == []
    index.upsert(["a"], np.ones((1, 2), np.float32))
    assert index.search(np.ones(2), 0) == []
    assert len(index.search(np.ones(2), 100)) == 1
    with pytest.raises(ValueError):
        index.search(np.ones(3), 1)


def test_rebuild_from_kuzu_matches_the_index_fed_by_apply_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ents, chunks = VectorIndex(DIM), VectorIndex(DIM)
    e_vecs = {f"e{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(60)}
    log = wal(
        entry(entities=[ent(i, v=v.tobytes()) for i, v in e_vecs.items()],
              documents=[WalDocument("d", "", "{}"), WalDocument("k", "", "{}")],
              chunks=[chunk(f"c{i}", "d" if i % 2 else "k", pos=i, v=vec(i, 1)) for i in range(20)]),
        entry(entities=[ent("e1", v=vec(9, 9, 9, 9))], relations=[]),
        entry(delete_entities=["e2", "e3"], delete_documents=["d"]),
        entry(entities=[ent("e2", v=vec(-1))]),
    )
    with shard_db(tmp_path / "db") as conn:
        for item in log:
            apply_batch(conn, [item], DIM).update_indexes(ents, chunks)
        # stubs (from a relation and a mention) never enter an index
        r = apply_batch(conn, wal(entry(relations=[WalRelation("e1", "far", "R", 1.0, "{}", [])],
                                        mentions=[WalMention("cx", "dx", "far2")]), start=6), DIM)
        r.update_indexes(ents, chunks)
        assert r.entity_ids == [] and r.chunk_ids == []
        loaded_e, loaded_c = load_indexes(conn, DIM)
    assert len(ents) == len(loaded_e) == 59 and len(chunks) == len(loaded_c) == 10
    for _ in range(20):
        q = rng.standard_normal(DIM).astype(np.float32)
        assert ents.search(q, 7) == loaded_e.search(q, 7)
        assert chunks.search(q, 4) == loaded_c.search(q, 4)
    assert loaded_e.search(np.array([1, 1, 1, 1], np.float32), 1) == [("e1", pytest.approx(1.0))]


def test_text_indexes_fed_by_apply_results_match_a_rebuild_from_kuzu(tmp_path: Path) -> None:
    ents, chunks = TextIndex(), TextIndex()
    log = wal(
        entry(entities=[ent("a", "Marie Curie", description="radium"), ent("b", "Pierre")],
              documents=[WalDocument("d", "", "{}"), WalDocument("k", "", "{}")],
              chunks=[chunk("c1", "d", "radium glows"), chunk("c2", "k", "paris in spring")],
              relations=[WalRelation("a", "far", "R", 1.0, "{}", [])]),
        entry(entities=[ent("a", "Marie Sklodowska", description="polonium")]),  # replaced text
        entry(delete_entities=["b"], delete_documents=["d"]),
        entry(entities=[ent("b", "Pierre Curie")], chunks=[chunk("c3", "k", "warsaw")]),
        entry(entities=[ent("x", "gone soon")]),
        entry(delete_entities=["x"]),
    )
    with shard_db(tmp_path / "db") as conn:
        for batch in (log[:2], log[2:3], log[3:]):  # upserts and deletes inside one batch too
            apply_batch(conn, batch, DIM).update_text_indexes(ents, chunks)
        loaded_e, loaded_c = load_text_indexes(conn)
    terms = ["marie", "curie", "radium", "polonium", "sklodowska", "pierre", "gone", "soon", "far",
             "glows", "paris", "spring", "warsaw"]
    assert ents.stats(terms) == loaded_e.stats(terms) and len(ents) == 2
    assert chunks.stats(terms) == loaded_c.stats(terms) and len(chunks) == 2
    idf = dict.fromkeys(terms, 1.0)
    assert ents.search(idf, 2.0, 10) == loaded_e.search(idf, 2.0, 10)
    assert chunks.search(idf, 2.0, 10) == loaded_c.search(idf, 2.0, 10)
