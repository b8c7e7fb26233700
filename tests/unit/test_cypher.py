"""The read-only check and the planner of torua.graph.query (pure), plus a few checks against
Kuzu's own lexer and function catalog so the check keeps matching the engine it guards."""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
from collections.abc import Iterator

import kuzu
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from torua.errors import BadRequest
from torua_node.cypher.guard import FORBIDDEN, check_read_only
from torua_node.cypher.lexer import render, tokenize
from torua_node.cypher.planner import AGGREGATES, KUZU_AGGREGATES, plan_query
from torua_node.storage.schema import init_schema


@pytest.fixture(scope="module")
def kz() -> Iterator[kuzu.Connection]:
    db = kuzu.Database(":memory:", buffer_pool_size=64 * 1024 * 1024, max_db_size=1 << 34)
    conn = kuzu.Connection(db)
    init_schema(conn, 4)
    yield conn
    conn.close()
    db.close()


def refused(cypher: str, params: dict | None = None) -> str:
    with pytest.raises(BadRequest) as err:
        plan_query(cypher, params or {})
    return err.value.description


# ---------------------------------------------------------------------------------------------------
# Forbidden keywords

WRITES = {
    "CREATE": "CREATE (m:Entity {id: 'x'})",
    "MERGE": "MERGE (m:Entity {id: 'x'})",
    "SET": "MATCH (n:Entity) SET n.name = 'x'",
    "DELETE": "MATCH (n:Entity) DELETE n",
    "DETACH": "MATCH (n:Entity) DETACH DELETE n",
    "REMOVE": "MATCH (n:Entity) REMOVE n.name",
    "DROP": "DROP TABLE Entity",
    "ALTER": "ALTER TABLE Entity ADD x INT64",
    "COPY": "COPY Entity FROM 'e.csv'",
    "LOAD": "LOAD FROM 'e.csv' RETURN *",
    "INSTALL": "INSTALL json",
    "ATTACH": "ATTACH 'other.kz' AS o",
    "EXPORT": "EXPORT DATABASE '/tmp/x'",
    "IMPORT": "IMPORT DATABASE '/tmp/x'",
    "USE": "USE o",
    "BEGIN": "BEGIN TRANSACTION",
    "COMMIT": "COMMIT",
    "ROLLBACK": "ROLLBACK",
    "CHECKPOINT": "CHECKPOINT",
    "CALL": "CALL show_tables() RETURN *",
    "UNINSTALL": "UNINSTALL json",
    "COMMENT": "COMMENT ON TABLE Entity IS 'x'",
}


def _cases(word: str) -> list[str]:
    mixed = "".join(c.lower() if i % 2 else c for i, c in enumerate(word))
    return [word, word.lower(), mixed]


@pytest.mark.parametrize("keyword", sorted(WRITES))
def test_every_forbidden_keyword_in_any_case_is_refused_by_name(keyword: str) -> None:
    for variant in _cases(keyword):
        text = WRITES[keyword].replace(keyword, variant)
        message = refused(text)
        assert keyword in message and "not allowed" in message


@pytest.mark.parametrize("keyword", sorted(FORBIDDEN))
def test_forbidden_keywords_anywhere_in_a_read_query(keyword: str) -> None:
    for variant in _cases(keyword):
        assert keyword in refused(f"MATCH (n:Entity) {variant} RETURN n.id")
        assert keyword in refused(f"MATCH (n:Entity) RETURN n.id, {variant}")


@pytest.mark.parametrize("text", [
    "/* harmless */ CREATE (n:Entity {id: 'x'})",
    "// a comment\nCREATE (n:Entity {id: 'x'})",
    "// a comment\rCREATE (n:Entity {id: 'x'})",  # a lone CR does not end a comment for Kuzu: refuse
    "MATCH (n:Entity)/* x */DETACH/* y */DELETE n",
    "MATCH (n:Entity)\n\tDETACH\n\n   DELETE n",
    "MATCH (n:Entity) RETURN 'x' CREATE (m:Entity {id: 'y'})",
    "MATCH (n:Entity) RETURN 'it\\'s' CREATE (m:Entity)",
    'MATCH (n:Entity) RETURN "a\\"b" CREATE (m:Entity)',
    "MATCH (n:Entity) RETURN 'a\\\\' CREATE (m:Entity)",
    "MATCH (n:Entity) RETURN `a``b` CREATE (m:Entity)",
    "MATCH (n:Entity) RETURN n.id;CREATE (m:Entity)",
    "MATCH (n:Entity) WITH n SET n.name = 'x' RETURN n",
    "MATCH (n:Entity) RETURN n.id UNION CALL db_version() RETURN *",
    "MATCH (n:Entity) WHERE EXISTS { MATCH (n) SET n.x = 1 } RETURN n",
    "MATCH (n:Entity) RETURN n.set",  # a property named like a keyword: refused too (be safe)
])
def test_hidden_writes_are_refused(text: str) -> None:
    refused(text)


@pytest.mark.parametrize("text", [
    "MATCH (n:Entity) WHERE n.name = 'CREATE' RETURN n.id",
    'MATCH (n:Entity) WHERE n.name = "DROP TABLE Entity; DELETE" RETURN n.id',
    "MATCH (n:Entity) /* DELETE everything */ RETURN n.id // DROP TABLE\n",
    "MATCH (n:Entity) WHERE n.name = 'a\\'; CREATE (x)' RETURN n.id",
    "MATCH (`CREATE`:Entity) RETURN `CREATE`.id",  # a backticked name is an identifier
    "MATCH (n:Entity) RETURN n.id AS `DELETE`",
    "MATCH (n:Entity) RETURN n.id;",
    "match (n:entity) where n.type starts with 'p' return n.id order by n.id limit 2",
])
def test_keywords_in_strings_comments_and_backticks_are_fine(text: str) -> None:
    plan_query(text, {})


def test_a_keyword_split_by_a_comment_is_two_words_as_in_kuzu(kz: kuzu.Connection) -> None:
    text = "MATCH (n:Entity) CRE/**/ATE (m:Entity) RETURN n.id"
    assert [t.text for t in tokenize(text)][6:8] == ["CRE", "ATE"]
    assert "CRE" in refused(text)  # not a supported clause, so refused; and nothing is a write
    with pytest.raises(RuntimeError, match="Parser exception"):
        kz.execute(text)  # Kuzu drops the comment too: two identifiers, a syntax error
    assert render(tokenize(text)).startswith("MATCH (n:Entity) CRE ATE")


@pytest.mark.parametrize("text,why", [
    ("MATCH (n:Entity) RETURN n.id; MATCH (n:Entity) RETURN n.id", "multiple statements"),
    ("MATCH (n:Entity) RETURN n.id;;", "multiple statements"),
    ("MATCH (n:KV) RETURN n.value", "internal"),
    ("MATCH (n:meta) RETURN n.value", "internal"),
    ("MATCH (n:`Failure`) RETURN n.error", "internal"),
    ("MATCH (n:Entity) WHERE n:KV RETURN n.id", "internal"),
    ("MATCH (n:Entity) RETURN 'unterminated", "unterminated string"),
    ("MATCH (n:Entity) /* unterminated RETURN n", "unterminated /*"),
    ("MATCH (`n:Entity) RETURN n", "unterminated `"),
    ("MATCH (n:Entity) RETURN n.id ＣREATE", "unexpected character"),
    ("MATCH (n:Entity) RETURN n.id\u00a0", "unexpected character"),
    ("MATCH (n:Entity) WHERE n.id = $x RETURN n.id", "$x"),
    ("", "empty"),
    ("  // only a comment", "empty"),
])
def test_other_refusals_of_the_check(text: str, why: str) -> None:
    assert why.lower() in refused(text).lower()


def test_strings_may_hold_any_character() -> None:
    plan_query("MATCH (n:Entity) WHERE n.name = 'Ké ＣREATE\u00a0' RETURN n.id", {})


# -- property-based: no spelling of a write gets through ------------------------------------------

_WRITE_QUERIES = [
    ["MATCH", "(n:Entity)", "SET", "n.name", "=", "'x'"],
    ["MATCH", "(n:Entity)", "DETACH", "DELETE", "n"],
    ["CREATE", "(:Entity", "{id:", "'x'})"],
    ["MERGE", "(:Entity", "{id:", "'x'})"],
    ["MATCH", "(n:Entity)", "REMOVE", "n.name"],
    ["DROP", "TABLE", "Entity"],
    ["COPY", "Entity", "FROM", "'x.csv'"],
    ["LOAD", "FROM", "'x.csv'", "RETURN", "*"],
    ["CALL", "show_tables()", "RETURN", "*"],
    ["MATCH", "(n:Entity)", "RETURN", "n.id", ";", "DROP", "TABLE", "Entity"],
    ["ATTACH", "'x.kz'", "AS", "x"],
    ["INSTALL", "json"],
]
_separators = st.one_of(
    st.sampled_from([" ", "\n", "\t", "\r\n", "  \n\t"]),
    st.text(alphabet="abcXYZ CREATE;'\"`$ ", max_size=12).map(lambda s: f"/*{s.replace('*/', '')}*/"),
    st.text(alphabet="abc DELETE;'\"` ", max_size=12).map(lambda s: f" //{s}\n"),
    st.sampled_from([" 'CREATE' ", ' "it\\"s" ', " `x` "]).map(lambda s: f" {s} "),
)


def _mix_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.swapcase() if f else c for c, f in zip(word, flips))


@st.composite
def disguised_writes(draw: st.DrawFn) -> str:
    words = draw(st.sampled_from(_WRITE_QUERIES))
    out = []
    for w in words:
        out.append(_mix_case(draw, w) if w.isalpha() else w)
        out.append(draw(_separators))
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(disguised_writes())
def test_disguised_writes_are_always_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        plan_query(text, {})


@settings(max_examples=300, deadline=None)
@given(disguised_writes())
def test_the_check_itself_catches_them(text: str) -> None:
    """Not only the planner: the token check alone refuses every disguised write."""
    with pytest.raises(BadRequest) as err:
        check_read_only(text, {})
    assert any(k in err.value.description for k in (*FORBIDDEN, "multiple statements", "unterminated"))


_READS = [
    "MATCH (n:Entity) WHERE n.type = 'person' RETURN n.name ORDER BY n.name LIMIT 3",
    "MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, count(*) AS c ORDER BY c DESC",
    "MATCH (c:Chunk)-[:MENTIONS]->(e:Entity) WHERE e.name <> 'x' RETURN DISTINCT c.document_id",
]


@st.composite
def disguised_reads(draw: st.DrawFn) -> tuple[str, str]:
    base = draw(st.sampled_from(_READS))
    toks = tokenize(base)
    out = []
    for t in toks:
        sep = draw(st.sampled_from(["", " ", "/**/", " // c\n", "\n"])) if t.space else ""
        if t.space and not sep.strip(" \n"):
            sep = sep or " "
        out.append(sep + (_mix_case(draw, t.text) if t.kind == "word" else t.text))
    return base, "".join(out)


@settings(max_examples=200, deadline=None)
@given(disguised_reads())
def test_reads_with_any_case_and_comments_are_accepted_and_planned_alike(pair: tuple[str, str]) -> None:
    base, text = pair
    assert [t.key for t in tokenize(text)] == [t.key for t in tokenize(base)]
    assert plan_query(text, {}).kind == plan_query(base, {}).kind


# -- the tokenizer agrees with Kuzu's lexer on where a string ends -------------------------------

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="ab'\"\\ ntu0/*`;", max_size=10), st.sampled_from(["'", '"']))
def test_string_literals_end_where_kuzu_ends_them(kz: kuzu.Connection, body: str, quote: str) -> None:
    literal = quote + body + quote
    try:
        toks = tokenize(f"RETURN {literal} AS x")
    except BadRequest:
        return  # unterminated for us; nothing is sent to Kuzu
    assume(len(toks) >= 2 and toks[1].kind == "string")
    ours = toks[1].text
    try:
        result = kz.execute(f"RETURN {ours} AS x")
    except RuntimeError:
        return  # Kuzu refuses it (e.g. an unknown escape): nothing runs
    assert result.get_column_names() == ["x"]  # Kuzu's string ended exactly where ours did


# ---------------------------------------------------------------------------------------------------
# Planner


def test_plan_kinds() -> None:
    assert plan_query("MATCH (n:Entity) RETURN n.id", {}).kind == "node"
    assert plan_query("MATCH (d:Document) RETURN count(*)", {}).kind == "node"
    assert plan_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, b.id", {}).kind == "rel"
    assert plan_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.name", {}).kind == "rel"
    assert plan_query("MATCH (a:Entity)-[r:RELATES]->(b) RETURN count(*)", {}).kind == "rel"
    assert plan_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, b.name", {}).kind == "far_end"
    assert plan_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity {name: 'x'}) RETURN a.name", {}).kind == "far_end"
    assert plan_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity {id: 'x'}) RETURN a.name", {}).kind == "rel"
    assert plan_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, count(b)", {}).kind == "far_end"


def test_node_plan_filters_stubs_and_pushes_limit_with_identity_ties() -> None:
    p = plan_query("MATCH (n:Entity) WHERE n.type = 'x' OR n.type = 'y' RETURN n.name"
                   " ORDER BY n.name DESC SKIP 2 LIMIT 3", {})
    assert "WHERE (n.type = 'x' OR n.type = 'y') AND n.stub = false" in p.query
    assert p.query.endswith("ORDER BY n.name DESC, __qt0 LIMIT 5")
    assert p.merge.order == ((0, True),) and p.merge.tiebreak == (1,)
    assert "stub" not in plan_query("MATCH (d:Document) RETURN d.id", {}).query


def test_aggregates_become_mergeable_partials_with_distinct_ones_last() -> None:
    p = plan_query("MATCH (n:Entity) RETURN n.type, avg(n.x), count(DISTINCT n.name), collect(n.id)", {})
    # kuzu 0.11.3 returns NULL for a plain aggregate after a DISTINCT one: DISTINCT ones go last
    assert p.query.endswith("RETURN n.type, avg(n.x), collect(n.id), sum(n.x) AS __qp4, count(n.x) AS __qp5,"
                            " count(DISTINCT n.name), collect(DISTINCT n.name) AS __qp6")
    kinds = [(a.kind, a.distinct, a.partials) for a in p.merge.aggs]
    assert kinds == [("avg", False, (4, 5)), ("count", True, (6,)), ("collect", False, (3,))]
    assert p.merge.perm == (0, 1, 5, 2, 3, 4, 6)  # merge column i is shard column perm[i]


def test_relationship_plan_anchors_on_the_end_read_in_full() -> None:
    p = plan_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.name", {})
    assert "b.stub = false AND (a.stub = false OR a.id IN $__q_real)" in p.query
    assert p.probe is not None and "RETURN DISTINCT a.id" in p.probe


def test_far_end_gather_pushes_only_safe_conjuncts() -> None:
    p = plan_query("MATCH (a:Entity)-[r:RELATES]-(b:Entity) WHERE r.weight > 1 AND b.name = 'x'"
                   " AND b.id <> 'q' RETURN a.name, b.name", {})
    assert p.far_end is not None
    gather = p.far_end.gather
    assert "UNION ALL" in gather and "(r.weight > 1)" in gather and "(b.id <> 'q')" in gather
    assert "b.name = 'x'" not in gather
    q = plan_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE r.weight > 1 OR b.name = 'x'"
                   " RETURN a.name, b.name", {})
    assert q.far_end is not None and "weight >" not in q.far_end.gather  # an OR with b: nothing pushed


def test_mentions_labels_are_inferred_or_checked() -> None:
    assert plan_query("MATCH (c)-[:MENTIONS]->(e) RETURN c.id, e.id", {}).kind == "rel"
    assert plan_query("MATCH (e:Entity)-[:MENTIONS]-(c) RETURN e.id, c.id", {}).kind == "rel"
    assert "MENTIONS goes from Chunk to Entity" in refused("MATCH (e:Entity)-[:MENTIONS]->(c:Chunk) RETURN e.id")
    assert "label at least one end" in refused("MATCH (x)-[:MENTIONS]-(y) RETURN x.id")
    assert "connects Entity" in refused("MATCH (c:Chunk)-[:RELATES]->(e:Entity) RETURN c.id")


def test_order_by_an_unreturned_expression_becomes_a_hidden_column() -> None:
    p = plan_query("MATCH (n:Entity) RETURN n.name AS nm ORDER BY size(nm) DESC, n.id", {})
    assert "size((n.name)) AS __qo0" in p.query and "n.id AS __qo1" in p.query
    assert p.merge.order == ((1, True), (2, False))


@pytest.mark.parametrize("text,why", [
    ("MATCH (a:Entity)-[:RELATES*]->(b:Entity) RETURN a.id", "upper bound"),
    ("MATCH (a:Entity)-[:RELATES*1..11]->(b:Entity) RETURN a.id", "over 10"),
    ("MATCH (a:Entity)-[:RELATES*0..2]->(b:Entity) RETURN a.id", "at least 1"),
    ("MATCH (a:Entity)-[:RELATES* WSHORTEST(weight) 1..3]->(b:Entity) RETURN a.id", "WSHORTEST"),
    ("MATCH (a:Entity)-[:RELATES]->(b:Entity)-[:RELATES]->(c:Chunk) RETURN a.id", "no relationship table fits hop 2"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity)-[r:RELATES]->(c:Entity) RETURN a.id", "appears twice"),
    ("MATCH (n:Entity) RETURN length(n)", "needs a relationship pattern"),
    ("MATCH (a:Entity), (b:Entity) RETURN a.id", "several patterns"),
    ("MATCH (a:Entity) OPTIONAL MATCH (b:Entity) RETURN a.id", "cartesian product"),
    ("MATCH (a:Entity)-->(b) WITH a MATCH (c:Entity)-->(d) RETURN c.id", "cartesian product"),
    ("MATCH (a:Entity)-[r:RELATES]->(b) WITH DISTINCT r LIMIT 2 RETURN r.weight", "(a relationship)"),
    ("MATCH (a:Entity)-->(b) WITH a, collect(b.id) AS ids ORDER BY a.id LIMIT 1 RETURN ids", "list"),
    ("MATCH (a:Entity) WITH a.name + 'x' RETURN 1", "needs an alias"),
    ("MATCH (a:Entity)-->(b) WITH a ORDER BY a.name LIMIT 3 RETURN a.id", "needs DISTINCT or an aggregate"),
    ("MATCH (a:Entity) WITH a.name AS n ORDER BY n LIMIT 3 RETURN n", "needs DISTINCT or an aggregate"),
    ("MATCH (a:Entity) WITH * RETURN a.id", "WITH *"),
    ("MATCH (a:Entity) WITH a.* RETURN 1", "name its properties"),
    ("MATCH (a:Entity) WITH a.id AS x MATCH (a)-->(b) RETURN b.id", "dropped by a WITH"),
    ("MATCH (a:Entity)-[r]->(b) WITH a, r MATCH (a)-[r]->(c) RETURN c.id", "bound by an earlier clause"),
    ("MATCH (a:Entity) WITH a, a.id AS b MATCH (a)-->(b) RETURN b", "not a node"),
    ("MATCH (a:Entity) WITH a.id AS x, a.name AS x RETURN x", "twice"),
    ("MATCH (a)--(b) WITH b RETURN b.*", "one label"),
    ("MATCH (a:Entity) WITH a RETURN a.id AS a", "hides"),
    ("WITH 1 AS x MATCH (a:Entity) RETURN a.id", "must start with MATCH"),
    ("MATCH (a:Entity) UNWIND [1] AS x RETURN x", "UNWIND"),
    ("MATCH (a:Entity) RETURN a.id UNION ALL MATCH (b:Entity) RETURN b.id", "UNION"),
    ("MATCH p = shortestPath((a:Entity)-[:RELATES*]->(b:Entity)) RETURN p", "shortestPath"),
    ("MATCH (a:Entity) WHERE (a)-->(:Entity) RETURN a.id", "pattern expressions"),
    ("MATCH (a:Entity) WHERE COUNT { MATCH (a)-[:RELATES]->() } > 1 RETURN a.id", "subqueries"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN label(r)", "whole relationship"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE a.id = b.id RETURN a.id AS b", "hides the pattern"),
    ("MATCH (n:Entity) RETURN n.id AS n", "hides the pattern variable"),
    ("MATCH (n:Entity) RETURN end_node(n)", "end_node"),
    ("MATCH (n:Entity) RETURN current_timestamp()", "changes from run to run"),
    ("MATCH (n:Entity) RETURN count_star()", "count(*)"),
    ("MATCH (n:Entity) RETURN size(collect(n.id))", "inside an expression"),
    ("MATCH (n:Entity) RETURN n.id ORDER BY count(*)", "ORDER BY an aggregate"),
    ("MATCH (n:Entity) RETURN DISTINCT n.type ORDER BY n.name", "ORDER BY must name"),
    ("MATCH (n:Entity) RETURN n.id LIMIT 1 + 1", "LIMIT"),
    ("MATCH (n:Entity) RETURN n.id LIMIT $l", "non-negative integer"),
    ("MATCH (n:Entity {__qx: 1}) RETURN n.id", "reserved"),
    ("MATCH (n:Widget) RETURN n.id", "unknown node table Widget"),
    ("RETURN 1", "must start with MATCH"),
    ("EXPLAIN MATCH (n:Entity) RETURN n.id", "EXPLAIN"),
])
def test_planner_refusals_say_why(text: str, why: str) -> None:
    assert why.lower() in refused(text, {"l": -1}).lower()


def test_kuzu_aggregates_and_rewrite_functions_are_all_classified(kz: kuzu.Connection) -> None:
    """If a Kuzu upgrade adds an aggregate, the planner must learn it (or refuse it) before it could
    be pushed to shards as if it were a scalar function."""
    rows = kz.execute("CALL show_functions() RETURN name, type").get_all()
    aggregates = {n.lower() for n, t in rows if t == "AGGREGATE FUNCTION"}
    assert aggregates == KUZU_AGGREGATES
    assert aggregates >= AGGREGATES
    rewrites = {n.lower() for n, t in rows if t == "REWRITE FUNCTION"}
    assert rewrites <= {"id", "start_node", "end_node", "length", "cost", "label", "labels", "keys", "nullif"}


def test_pipelines_walk_clause_by_clause_from_the_bound_nodes() -> None:
    p = plan_query("MATCH (a:Entity {id: 'e1'}) OPTIONAL MATCH (x)-[:RELATES]->(a)-[:RELATES]->(y)"
                   " RETURN x.id, y.id", {})
    assert p.kind == "chain" and p.chain is not None
    assert p.chain.hops == () and p.chain.start_ids == ("e1",)  # a node scan, on e1's shard only
    (walks,) = p.chain.stages
    assert [w.start_from for w in walks] == ["a", "a"]  # split at a, both halves walked from it
    assert [(w.nodes[0].var, w.hops[0].direction, w.nodes[1].var) for w in walks] == [("a", "<-", "x"), ("a", "->", "y")]
    assert p.query == ("MATCH (a:Entity {id: 'e1'}) OPTIONAL MATCH (x)-[:RELATES]->(a)-[:RELATES]->(y)"
                       " RETURN x.id, y.id")


def test_with_is_rewritten_only_where_kuzu_needs_it() -> None:
    # DISTINCT aggregates last (kuzu 0.11.3); ties under LIMIT ordered by every projected item
    q = plan_query("MATCH (a:Entity)-->(b) WITH a, count(DISTINCT b.id) AS n, count(*) AS k ORDER BY n LIMIT 2"
                   " WHERE k > 1 RETURN a.id, n, k", {}).query
    assert q.startswith("MATCH (a:Entity)-->(b) WITH a, count(*) AS k, count(DISTINCT b.id) AS n"
                        " ORDER BY n, a.id, n, k LIMIT 2 WHERE k > 1 RETURN")
    q = plan_query("MATCH (a)-[:MENTIONS]-(b) WITH DISTINCT a SKIP $s RETURN a.id", {"s": 1}).query
    assert "WITH DISTINCT a ORDER BY a.id, label(a) SKIP $s RETURN" in q  # a: an Entity or a Chunk
    p = plan_query("MATCH (a:Entity) WITH a AS z OPTIONAL MATCH (z)-->(y) RETURN z.*", {})
    assert p.query.endswith("RETURN z.id, z.name, z.type, z.description, z.properties")
    assert p.chain is not None and p.chain.stages[0][0].start_from == "a"  # z is a
    assert p.chain.columns["Entity"] == ("id", "name", "type", "description", "properties")  # no embedding
