"""The pure scoring of retrieval (rag/graphrank.py): text scores, seeds, paths, evidence, fusion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torua.model import EdgeOut, Hit
from torua_node.rag.graphrank import (
    ChunkEvidence,
    Weights,
    direct_scores,
    fuse,
    lexical_relevance,
    relation_factors,
    relation_relevance,
    seed_weights,
    specificity,
    spread,
    stating_chunks,
    stems,
    type_named,
)
from torua_node.storage.textindex import bm25_idf

W = Weights()


def edge(a: str, b: str, t: str = "KNOWS", weight: float = 1.0, chunks: tuple[str, ...] = ()) -> EdgeOut:
    return EdgeOut(source=a, target=b, type=t, weight=weight, properties={}, chunks=list(chunks))


def test_direct_scores_mix_bm25_over_its_best_and_cosine_over_its_range() -> None:
    bm = [Hit(id="a", score=10.0, shard=0), Hit(id="b", score=5.0, shard=0)]
    vec = [Hit(id="b", score=0.9, shard=0), Hit(id="c", score=0.5, shard=0)]
    got = direct_scores(bm, vec, W)
    assert got["a"] == W.text_share
    assert got["b"] == W.text_share * 0.5 + (1 - W.text_share)
    assert got["c"] == 0.0  # the worst vector hit, and no BM25
    assert direct_scores([], [], W) == {}


def test_seeds_are_names_the_question_covers() -> None:
    hits = [Hit(id="e:lotem-o", score=8.0, shard=0), Hit(id="e:lotem-p", score=6.0, shard=0), Hit(id="e:port", score=4.0, shard=0)]
    names = {"e:lotem-o": "Lotem Oshloson", "e:lotem-p": "Lotem Praprason", "e:port": "Port Authority of Kalo"}
    seeds = seed_weights(hits, names, "Where was Lotem Oshloson born?", W)
    assert seeds["e:lotem-o"] == 1.0
    assert seeds["e:lotem-p"] == 0.5**2 * 6 / 8  # half the name: a weak seed
    assert "e:port" not in seeds  # a quarter of the name is not enough


def test_spread_follows_at_most_hops_relations_best_path_first() -> None:
    edges = [edge("s", "a"), edge("a", "b"), edge("b", "c")]
    f = np.array([0.5, 0.5, 0.5])
    got = spread({"s": 1.0}, edges, f, 2, W)
    assert got.weight == {"s": 1.0, "a": 0.5, "b": 0.25}
    assert got.forward.tolist() == [1.0 * 0.5, 0.5 * 0.5, 0.0]  # carried along the path, not past hop 2
    # Relations are followed both ways.
    back = spread({"c": 1.0}, edges, f, 1, W)
    assert back.weight == {"c": 1.0, "b": 0.5} and back.backward.tolist() == [0.0, 0.0, 0.5]


def test_a_path_never_turns_back_along_the_type_it_came_by() -> None:
    """s works for hub; hub's other employees are siblings, not the next hop; what hub makes is."""
    edges = [edge("s", "hub", "WORKS_FOR"), edge("other", "hub", "WORKS_FOR"), edge("hub", "p", "MAKES")]
    got = spread({"s": 1.0}, edges, np.array([0.5, 0.5, 0.5]), 2, W)
    assert got.weight == {"s": 1.0, "hub": 0.5, "p": 0.25}
    assert got.backward.tolist()[1] == 0.0  # hub -> other carried nothing
    # Reached another way, the same relation is a step forward.
    got = spread({"x": 1.0}, [edge("x", "hub", "OWNS"), *edges[1:]], np.array([0.5, 0.5, 0.5]), 2, W)
    assert got.weight["other"] == 0.25


def test_an_entity_between_two_seeds_gets_part_of_the_second_path() -> None:
    edges = [edge("x", "m"), edge("y", "m"), edge("x", "n")]
    got = spread({"x": 1.0, "y": 1.0}, edges, np.array([0.5, 0.5, 0.5]), 1, W).weight
    assert got["m"] == 0.5 + W.second_seed * 0.5  # the bridge
    assert got["n"] == 0.5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), st.floats(0.05, 1.0)), min_size=1, max_size=25),
    st.integers(1, 3),
    st.randoms(use_true_random=False),
)
def test_spread_does_not_depend_on_the_order_of_relations(raw: list[tuple[int, int, float]], hops: int, rnd: object) -> None:
    edges = [edge(f"n{a}", f"n{b}", t=f"T{i % 3}") for i, (a, b, _) in enumerate(raw)]  # shared types: U-turns happen
    f = np.array([x for _, _, x in raw])
    order = list(range(len(edges)))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    seeds = {"n0": 1.0, "n3": 0.5}
    a = spread(seeds, edges, f, hops, W)
    b = spread(seeds, [edges[i] for i in order], f[order], hops, W)
    assert a.weight.keys() == b.weight.keys() and all(abs(a.weight[k] - b.weight[k]) < 1e-12 for k in a.weight)
    assert np.allclose(a.forward[order], b.forward) and np.allclose(a.backward[order], b.backward)


def test_a_relation_passes_on_decay_times_relevance_times_confidence() -> None:
    edges = [edge("a", "b", "FOUNDED"), edge("a", "c", "BORN_IN"), edge("a", "d", "FOUNDED", weight=0.3)]
    f = relation_factors(edges, {"FOUNDED": 1.0}, W)
    assert f[0] == W.decay
    assert f[1] == W.decay * W.relation_floor  # a type unrelated to the question
    assert abs(f[2] - W.decay * 0.3) < 1e-12  # an extractor's guess passes on less


def test_relation_relevance_is_the_closest_question_word_scaled_to_the_best_type() -> None:
    types = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    words = np.array([[0.8, 0.6], [0.0, 1.0]])
    got = relation_relevance(types, words)
    assert got[1] == 1.0 and 0 < got[0] < 1 and got[2] == 0.0
    assert relation_relevance(np.zeros((0, 2)), words).shape == (0,)


def test_specificity_is_one_for_a_single_chunk_and_falls_for_hubs() -> None:
    got = specificity({"rare": 1, "common": 50, "everywhere": 100}, 100)
    assert got["rare"] > got["common"] > got["everywhere"] >= 0
    assert abs(specificity({"one": 0}, 100)["one"] - 1.0) < 1e-12


def test_a_chunk_scores_by_its_strongest_evidence_not_the_sum() -> None:
    ev = ChunkEvidence()
    for _ in range(40):  # a table mentioning forty loosely related entities
        ev.mentions("table", 0.1)
    ev.mentions("fact", 0.5)
    ev.states(["fact"], 0.4)
    ev.states(["fact"], 0.2)
    got = ev.scores(W)
    assert got["table"] == W.mention * 0.1
    assert got["fact"] == W.provenance * 0.4 + W.mention * 0.5


def test_fuse_ranks_by_text_and_graph_with_ties_by_id() -> None:
    got = fuse({"b": 1.0, "a": 1.0, "z": 0.0}, {"c": W.direct * 1.0, "d": 0.1}, 3, W)
    assert got == [("a", W.direct), ("b", W.direct), ("c", W.direct)]


def test_type_named() -> None:
    assert type_named("country", {"coun", "whic"})
    assert not type_named("city", {"coun"}) and not type_named("", {"coun"})


def test_stating_chunks_are_a_few_per_typed_relation_type_lowest_ids_first() -> None:
    edges = [
        edge("a", "b", "BORN_IN", chunks=("c9", "c2", "c7", "c1")),  # only a relation's first three count
        edge("x", "y", "BORN_IN", chunks=("c3",)),
        edge("a", "x", "RELATED_TO", chunks=("c0",)),
        edge("b", "y", "FOUNDED", chunks=("c5", "c5")),
    ]
    assert stating_chunks(edges, 3, "RELATED_TO") == {"BORN_IN": ["c2", "c3", "c7"], "FOUNDED": ["c5"]}
    assert stating_chunks(list(reversed(edges)), 3, "RELATED_TO") == stating_chunks(edges, 3, "RELATED_TO")


def test_a_type_is_as_relevant_as_the_question_words_its_chunks_use() -> None:
    texts = {
        "c1": "Rena Voss's hometown is Kell.",
        "c2": "Kell is where Odo Brand came into the world.",
        "c3": "Arlo Tamm started Vexa Labs with two friends.",
        "c4": "Vexa Labs sells lamps.",
    }
    asked = stems("what is the hometown of the person who started the company")
    got = lexical_relevance({"BORN_IN": ["c1", "c2"], "FOUNDED": ["c3"], "MAKES": ["c4"]}, texts, asked)
    assert got == {"BORN_IN": 1.0, "FOUNDED": 1.0}  # best chunk per type: one asked word each; MAKES none
    assert lexical_relevance({"MAKES": ["c4"]}, texts, asked) == {}
    assert lexical_relevance({"BORN_IN": ["missing"]}, texts, asked) == {}


def test_a_seed_named_by_words_common_in_the_text_is_weak() -> None:
    """'pick up' in a question names the metric `up` only in passing: 'up' is in many chunks."""
    hits = [Hit(id="m:up", score=8.0, shard=0), Hit(id="e:reload", score=8.0, shard=0), Hit(id="e:ui", score=8.0, shard=0)]
    names = {"m:up": "up", "e:reload": "reload endpoint", "e:ui": "Swagger UI"}
    docs = 1000
    idf = {"up": bm25_idf(400, docs), "reload": bm25_idf(3, docs), "endpoint": bm25_idf(300, docs),
           "swagger": bm25_idf(100, docs), "ui": bm25_idf(500, docs)}
    question = "How does a running server pick up the reload endpoint or the Swagger UI?"
    seeds = seed_weights(hits, names, question, W, idf, docs)
    common = bm25_idf(round(W.common_share * docs), docs)  # a word in common_share of the chunks
    assert seeds["m:up"] == pytest.approx(bm25_idf(400, docs) / common)
    assert seeds["m:up"] < 0.5
    assert seeds["e:reload"] == 1.0  # its rarest word is rare: the common one does not weaken it
    assert seeds["e:ui"] == 1.0  # 'swagger' is in exactly common_share of the chunks
    # Without the text's statistics (or words it does not know), every name counts fully.
    assert seed_weights(hits, names, question, W) == dict.fromkeys(names, 1.0)
    assert seed_weights(hits, names, question, W, {}, docs) == dict.fromkeys(names, 1.0)
