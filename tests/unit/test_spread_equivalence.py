"""`spread` (rag/graphrank.py) returns exactly what its first, plainer implementation did.

`_reference_spread` is that implementation, verbatim; the optimised one must agree with it bit for
bit (same weights, same floats, same `carried` each way) on random graphs, where ties between
equally good paths and U-turns are common, and on inputs captured from a benchmark when present.
"""

from __future__ import annotations

import glob
import os
import pickle
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torua.model import EdgeOut
from torua_node.rag.graphrank import Paths, Weights, spread

W = Weights()

# Calls captured from a running router, if given (a glob): files of pickled (seeds, edges, factors,
# hops, weights) tuples, one after another.
CAPTURES = os.environ.get("TORUA_SPREAD_CAPTURES", "")


def _reference_spread(seeds: Mapping[str, float], edges: Sequence[EdgeOut], factors: np.ndarray, hops: int, w: Weights) -> Paths:
    """`graphrank.spread` as it was before its rounds followed only the steps whose source rose
    (commit 72725e6), verbatim but for this docstring: dense rounds over every seed and step."""
    carried = np.zeros(2 * len(edges))
    if not seeds:
        return Paths({}, carried[: len(edges)], carried[len(edges) :])
    nodes = sorted(set(seeds) | {e.source for e in edges} | {e.target for e in edges})
    index = {n: i for i, n in enumerate(nodes)}
    seed_ids = sorted(seeds)
    weights = np.zeros((len(seed_ids), len(nodes)))
    for row, s in enumerate(seed_ids):
        weights[row, index[s]] = seeds[s]
    if edges:
        types = {t: i for i, t in enumerate(sorted({e.type for e in edges}))}
        a = np.array([index[e.source] for e in edges])
        b = np.array([index[e.target] for e in edges])
        t = np.array([types[e.type] for e in edges])
        src, dst = np.concatenate([a, b]), np.concatenate([b, a])
        f = np.concatenate([factors, factors])
        arrive = np.concatenate([2 * t, 2 * t + 1])  # how a step arrives: type and direction
        u_turn = np.concatenate([2 * t + 1, 2 * t])  # the same type, walked the other way
        came_by = np.full(weights.shape, -1)
        none = 2 * len(types)
        # Steps grouped by the node they arrive at (stable: within a group, in step order), so that a
        # node's best incoming step is one reduction over its group rather than a scatter per step.
        order = np.argsort(dst, kind="stable")
        into = dst[order]
        starts = np.flatnonzero(np.r_[True, into[1:] != into[:-1]])
        reached = into[starts]  # the nodes some step arrives at
        src, f, arrive, u_turn = src[order], f[order], arrive[order], u_turn[order]
        unsort = np.empty_like(order)
        unsort[order] = np.arange(len(order))
        best = np.zeros(weights.shape)  # per node: its best incoming step, per seed (0: none)
        how = np.full(weights.shape, none)  # the best step's arrival, lowest on ties
        for _ in range(hops):
            cand = np.where(came_by[:, src] != u_turn, weights[:, src] * f, 0.0)
            carried = np.maximum(carried, cand.max(axis=0)[unsort])
            best[:, reached] = np.maximum(np.maximum.reduceat(cand, starts, axis=1), 0.0)
            ties = np.where((cand == best[:, into]) & (cand > 0), arrive, none)
            how[:, reached] = np.minimum.reduceat(ties, starts, axis=1)
            came_by = np.where(best > weights, how, came_by)
            weights = np.maximum(weights, best)
    if len(seed_ids) > 1:
        ordered = -np.sort(-weights, axis=0)
        total = ordered[0] + w.second_seed * ordered[1]
    else:
        total = weights[0]
    weight = {n: v for n, v in zip(nodes, total.tolist()) if v > 0}
    return Paths(weight, carried[: len(edges)], carried[len(edges) :])


def assert_same(got: Paths, want: Paths) -> None:
    assert list(got.weight.items()) == list(want.weight.items())  # same keys, order and floats
    for a, b in ((got.forward, want.forward), (got.backward, want.backward)):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def edge(a: str, b: str, t: str, weight: float = 1.0) -> EdgeOut:
    return EdgeOut(source=a, target=b, type=t, weight=weight, properties={}, chunks=[])


# Few distinct values, so that equally good paths (ties) are common, and any value in between.
factor = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.85, 1.0]), st.floats(0.0, 1.0))
seed_weight = st.one_of(st.sampled_from([1.0, 0.5, 0.25]), st.floats(0.0, 1.0))


@st.composite
def graphs(draw: st.DrawFn) -> tuple[dict[str, float], list[EdgeOut], np.ndarray, int]:
    n = draw(st.integers(1, 9))
    node = st.integers(0, n - 1).map(lambda i: f"n{i}")
    # (source, type, target) distinct; parallel relations of other types and self-loops allowed.
    triples = draw(st.lists(st.tuples(node, st.sampled_from(["A", "B", "C", "D"]), node), max_size=30, unique=True))
    edges = [edge(a, b, t) for a, t, b in triples]
    f = np.array(draw(st.lists(factor, min_size=len(edges), max_size=len(edges))), dtype=np.float64)
    # Seeds mostly among the relations' ends, sometimes elsewhere (an entity no relation touches).
    seeds = draw(st.dictionaries(st.one_of(node, st.sampled_from(["lone", "n99"])), seed_weight, max_size=5))
    return seeds, edges, f, draw(st.integers(0, 4))


@settings(max_examples=600, deadline=None)
@given(graphs(), st.sampled_from([1.0, 0.5, 0.0]))
def test_spread_is_the_reference_on_random_graphs(g: tuple[dict[str, float], list[EdgeOut], np.ndarray, int], second: float) -> None:
    seeds, edges, f, hops = g
    w = Weights(second_seed=second)
    assert_same(spread(seeds, edges, f, hops, w), _reference_spread(seeds, edges, f, hops, w))


@settings(max_examples=300, deadline=None)
@given(graphs(), st.lists(st.floats(-1.0, 2.0), min_size=30, max_size=30), st.floats(-1.0, 1.0), st.floats(-1.0, 1.0))
def test_spread_is_the_reference_for_any_finite_weights(
    g: tuple[dict[str, float], list[EdgeOut], np.ndarray, int], raw: list[float], seed: float, second: float
) -> None:
    """Out of the usual range too: negative or zero seeds, negative factors, factors above 1 (not NaN
    or infinite ones: the dense rounds spread a NaN to every entity a step reaches, these do not)."""
    seeds, edges, _, hops = g
    seeds = {s: (seed if i % 2 else v) for i, (s, v) in enumerate(seeds.items())}
    f = np.array(raw[: len(edges)])
    w = Weights(second_seed=second)
    assert_same(spread(seeds, edges, f, hops, w), _reference_spread(seeds, edges, f, hops, w))


def test_spread_is_the_reference_on_graphs_of_a_question_s_size() -> None:
    """About what a question's expansion holds (20 seeds, ~300 entities, ~450 relations, 3 hops),
    hubs included, with a few factor values so that ties are common."""
    rng = np.random.default_rng(7)
    for n, m, n_seeds, hops in [(300, 450, 20, 3), (60, 450, 20, 3), (120, 300, 8, 4), (40, 120, 2, 2)]:
        hubs = rng.integers(0, n, 8)
        triples: dict[tuple[int, str, int], None] = {}
        while len(triples) < m:
            a = int(hubs[rng.integers(8)] if rng.random() < 0.4 else rng.integers(n))
            triples[(a, f"T{rng.integers(6)}", int(rng.integers(n)))] = None
        edges = [edge(f"e{a:04d}", f"e{b:04d}", t) for a, t, b in triples]
        f = rng.choice([0.85, 0.425, 0.3, 0.255], m) * rng.choice([1.0, 0.5], m)
        seeds = {f"e{i:04d}": float(rng.choice([1.0, 0.25, rng.random()])) for i in rng.choice(n, n_seeds, replace=False)}
        assert_same(spread(seeds, edges, f, hops, W), _reference_spread(seeds, edges, f, hops, W))


def test_spread_is_the_reference_on_degenerate_inputs() -> None:
    e = [edge("a", "b", "A"), edge("b", "a", "A"), edge("a", "a", "B")]
    f = np.array([0.5, 0.5, 0.5])
    odd = Weights(second_seed=-1.0)
    for seeds, edges, factors, hops, w in [
        ({}, e, f, 3, W),
        ({"a": 1.0}, [], np.zeros(0), 3, W),
        ({"a": 1.0, "z": 0.5}, [], np.zeros(0), 2, W),
        ({"a": 1.0}, e, f, 0, W),
        ({"a": 0.0, "b": 1.0}, e, f, 2, W),
        ({"a": 1.0, "b": 1.0}, e, np.zeros(3), 2, W),
        # A negative seed: the first round raises every weight to 0 at least, reached or not.
        ({"a": 1.0, "z": -1.0}, e, f, 1, odd),
        ({"a": -0.5, "b": 1.0}, e, -f, 2, odd),
    ]:
        assert_same(spread(seeds, edges, factors, hops, w), _reference_spread(seeds, edges, factors, hops, w))


def captured() -> list[tuple[dict[str, float], list[EdgeOut], np.ndarray, int, Weights]]:
    calls = []
    for path in sorted(glob.glob(CAPTURES)):
        with open(path, "rb") as fh:
            while True:
                try:
                    calls.append(pickle.load(fh))
                except EOFError:
                    break
    return calls


def test_spread_is_the_reference_on_captured_inputs() -> None:
    calls = captured()
    if not calls:
        pytest.skip(f"no captured calls (TORUA_SPREAD_CAPTURES={CAPTURES!r})")
    for seeds, edges, factors, hops, w in calls:
        assert_same(spread(seeds, edges, factors, hops, w), _reference_spread(seeds, edges, factors, hops, w))
