"""The harder multi-hop benchmark generator (bench/multihop.py): deterministic, consistent, balanced."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import msgspec
import pytest
from bench.multihop import _BRIDGES, KINDS, SIZES, Benchmark, Fact, Question, generate


@pytest.fixture(scope="module")
def small() -> Benchmark:
    return generate(3, "small")


@pytest.fixture(scope="module")
def default() -> Benchmark:
    return generate(7, "default")


def plain(b: Benchmark) -> object:
    return msgspec.to_builtins([b.documents, b.chunks, b.entities, b.relations]), b.questions, b.backref_chunks


def test_same_seed_same_benchmark_other_seed_other_benchmark(small: Benchmark) -> None:
    assert plain(generate(3, "small")) == plain(small)
    assert plain(generate(4, "small")) != plain(small)


def test_default_size_is_what_the_benchmark_promises(default: Benchmark) -> None:
    assert 700 <= len(default.entities) <= 800
    assert len(default.chunks) >= 1300
    assert 250 <= len(default.documents) <= SIZES["default"]["documents"]
    assert len(default.questions) >= 500
    assert {e.type for e in default.entities} == {"person", "company", "city", "university", "product", "country"}
    assert len({e.id for e in default.entities}) == len(default.entities)
    assert len({c.id for c in default.chunks}) == len(default.chunks)
    per_doc = Counter(c.document_id for c in default.chunks)
    assert set(per_doc) == {d.id for d in default.documents} and min(per_doc.values()) >= 2


def index(b: Benchmark) -> tuple[dict, dict, dict]:
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    inn: dict[tuple[str, str], list[str]] = defaultdict(list)
    stated: dict[tuple[str, str, str], list[str]] = {}
    for r in b.relations:
        out[(r.source, r.type)].append(r.target)
        inn[(r.target, r.type)].append(r.source)
        assert (r.source, r.type, r.target) not in stated, "each fact is stated once"
        stated[(r.source, r.type, r.target)] = r.chunks
    return out, inn, stated


@pytest.mark.parametrize("name", ["small", "default"])
def test_every_supporting_chunk_exists_and_states_its_fact(name: str, request: pytest.FixtureRequest) -> None:
    b: Benchmark = request.getfixturevalue(name)
    chunks = {c.id: c for c in b.chunks}
    names = {e.id: e.name for e in b.entities}
    _, _, stated = index(b)
    for q in b.questions:
        assert len(q.supporting) == len(q.facts) >= 1, q
        for chunk_id, f in zip(q.supporting, q.facts):
            c = chunks[chunk_id]
            assert stated[(f.source, f.type, f.target)] == [chunk_id]
            assert {f.source, f.target} <= set(c.entities)
            # The passage names at least one end (the other may be "she" / "the firm").
            assert names[f.source] in c.text or names[f.target] in c.text, c.text


def follow(start: str, facts: tuple[Fact, ...]) -> str:
    cur = start
    for f in facts:
        assert cur in (f.source, f.target), (cur, f)
        cur = f.target if f.source == cur else f.source
    return cur


def test_question_paths_lead_to_their_answers(default: Benchmark) -> None:
    out, inn, _ = index(default)
    types = {e.id: e.type for e in default.entities}
    hops = {"lookup": 1, "chain2": 2, "chain3": 3}
    for q in default.questions:
        if q.kind in hops:
            assert q.hops == hops[q.kind] and len(q.anchors) == 1
            assert follow(q.anchors[0], q.facts) == q.answer
            assert q.answer in types and q.answer not in q.anchors
        elif q.kind == "comparison":
            a, b = q.anchors
            half = len(q.facts) // 2
            same = follow(a, q.facts[:half]) == follow(b, q.facts[half:])
            assert q.answer == ("yes" if same else "no")
        else:
            assert q.kind == "bridge"
            shape = next(s for s in _BRIDGES if s.name == q.shape)
            assert q.hops == len(shape.left) + len(shape.right)
            assert follow(q.answer, q.facts[: len(shape.left)]) == q.anchors[0]
            assert follow(q.answer, q.facts[len(shape.left) :]) == q.anchors[1]
            # The answer is the only entity of its type that reaches both anchors.
            def reach(e: str, steps: tuple[tuple[str, int], ...]) -> str | None:
                for rel, d in steps:
                    nxt = out.get((e, rel), []) if d > 0 else inn.get((e, rel), [])
                    if len(nxt) != 1:
                        return None
                    e = nxt[0]
                return e

            both = [e for e, t in types.items() if t == types[q.answer]
                    and reach(e, shape.left) == q.anchors[0] and reach(e, shape.right) == q.anchors[1]]
            assert both == [q.answer], q.text


def test_question_kinds_and_shapes_are_balanced(default: Benchmark) -> None:
    kinds = Counter(q.kind for q in default.questions)
    assert set(kinds) == set(KINDS) and len(set(kinds.values())) == 1
    shapes: dict[str, Counter[str]] = defaultdict(Counter)
    for q in default.questions:
        shapes[q.kind][q.shape] += 1
    for kind, counts in shapes.items():
        assert len(counts) >= 4 and max(counts.values()) <= 2 * min(counts.values()) + 1, (kind, counts)
    answers = Counter(q.answer for q in default.questions if q.kind == "comparison")
    assert abs(answers["yes"] - answers["no"]) <= len(shapes["comparison"])
    assert len({q.text for q in default.questions}) == len(default.questions)


def test_the_corpus_has_what_makes_it_hard(default: Benchmark) -> None:
    names = {e.id: e.name for e in default.entities}
    chunks = {c.id: c for c in default.chunks}
    fact_of = {cid: r for r in default.relations for cid in r.chunks}
    questions: list[Question] = default.questions
    # back-references: a fact passage that names only one end of its fact
    support = {c for q in questions for c in q.supporting}
    backrefs = [c for c in default.backref_chunks if c in support]
    assert len(backrefs) >= len(support) // 5
    for cid in default.backref_chunks:
        r = fact_of[cid]
        assert (names[r.source] in chunks[cid].text) != (names[r.target] in chunks[cid].text), chunks[cid].text
    # near-duplicate names: name words shared by several entities of different types
    word_types: dict[str, set[str]] = defaultdict(set)
    for e in default.entities:
        for w in re.findall(r"\w+", e.name.lower()):
            word_types[w].add(e.type)
    assert sum(len(t) >= 3 for t in word_types.values()) >= 10
    # hubs, noise that reuses the questions' entities, passages that mention several entities
    mentions = Counter(e for c in default.chunks for e in c.entities)
    assert mentions.most_common(1)[0][1] >= 50
    noise = [c for c in default.chunks if c.id not in fact_of]
    anchors = {a for q in questions for a in q.anchors}
    assert len(noise) >= 100 and sum(bool(set(c.entities) & anchors) for c in noise) >= 50
    assert sum(len(c.entities) >= 3 for c in default.chunks) >= 200
    # paraphrase: every shape is asked in more than one wording
    openings: dict[str, set[str]] = defaultdict(set)
    for q in questions:
        openings[q.shape].add(" ".join(q.text.split()[:2]))
    assert all(len(v) >= 2 for v in openings.values())
