"""BM25 with global statistics: splitting the corpus over shards does not change any score."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from torua.hashing import shard_for
from torua_node.storage.textindex import TextIndex, bm25_idf, query_terms

WORDS = ["alpha", "beta", "gamma", "delta", "radium", "curie", "paris", "warsaw", "the", "of"]
docs = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=4), st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join), max_size=30
)


def global_search(shards: list[TextIndex], query: str, k: int) -> list[tuple[str, float]]:
    terms = query_terms(query)
    stats = [s.stats(terms) for s in shards]
    n = sum(st[1] for st in stats)
    total = sum(st[2] for st in stats)
    idf = {t: bm25_idf(sum(st[0][t] for st in stats), n) for t in terms}
    hits = [h for s in shards for h in s.search(idf, total / n if n else 0.0, k)]
    return sorted(hits, key=lambda h: (-h[1], h[0]))[:k]


@settings(max_examples=60, deadline=None)
@given(docs, st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join), st.integers(1, 8))
def test_sharded_scores_equal_one_index(corpus: dict[str, str], query: str, num_shards: int) -> None:
    one = TextIndex()
    one.upsert(corpus.items())
    shards = [TextIndex() for _ in range(num_shards)]
    for doc_id, text in corpus.items():
        shards[shard_for(doc_id, num_shards)].upsert([(doc_id, text)])
    expected = global_search([one], query, 5)
    got = global_search(shards, query, 5)
    assert [h[0] for h in got] == [h[0] for h in expected]
    assert all(abs(a[1] - b[1]) < 1e-9 for a, b in zip(got, expected))


def test_update_and_remove_keep_statistics_right() -> None:
    idx = TextIndex()
    idx.upsert([("a", "radium curie"), ("b", "paris")])
    idx.upsert([("a", "warsaw")])
    assert idx.stats(["radium", "warsaw"]) == ({"radium": 0, "warsaw": 1}, 2, 2)
    idx.remove(["a", "missing"])
    assert idx.stats(["warsaw"]) == ({"warsaw": 0}, 1, 1)
    assert query_terms("Who discovered the radium of Curie?") == ["discovered", "radium", "curie"]
