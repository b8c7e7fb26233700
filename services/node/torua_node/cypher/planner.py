"""The planner of `torua.graph.query`: one read-only Cypher statement to shard queries and a merge.
Pure: no I/O.

The text is first checked (`guard.check_read_only`, over `lexer` tokens). The planner then accepts
one `MATCH` of one node or one relationship, then `WHERE`, `RETURN [DISTINCT]`, `ORDER BY`, `SKIP`,
`LIMIT`, and turns it into shard queries plus a `MergeSpec` whose merge gives what one database
holding all the data would return. Anything it cannot prove exact is refused. Every query it builds
is rendered from the checked tokens, never from the user's text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeGuard, get_args

from torua.errors import BadRequest
from torua_node.cypher.guard import check_read_only
from torua_node.cypher.lexer import Tok, render
from torua_node.storage.tables import NODE_TABLES, REL_TABLES, TABLES, NodeTable

__all__ = [
    "plan_query",
    "Plan",
    "FarEnd",
    "MergeSpec",
    "AggSpec",
    "AGGREGATES",
    "KUZU_AGGREGATES",
    "TABLE_COLUMNS",
    "OWNER_KEY",
    "REAL_IDS_PARAM",
    "IDS_PARAM",
    "resolve_query",
]

# ---------------------------------------------------------------------------------------------------
# Plans

REAL_IDS_PARAM = "__q_real"
IDS_PARAM = "__q_ids"
RESERVED_PREFIX = "__q"
# The tables graph.query reads (storage.tables: all but the internal ones) and their columns.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    t.name: t.column_names for t in TABLES if not (isinstance(t, NodeTable) and t.internal)
}
# Label as written (Kuzu compares names case-insensitively) -> table.
_NODE_TABLES = {t.name.lower(): t.name for t in NODE_TABLES if t.name in TABLE_COLUMNS}
_REL_TABLES = {t.name.lower(): t.name for t in REL_TABLES if t.name in TABLE_COLUMNS}
_REL = {t.name: t for t in REL_TABLES if t.name in TABLE_COLUMNS}
# How the edges that join different tables go, named when a pattern has them the wrong way round.
_ASYMMETRIC = "; ".join(f"{t.name} goes from {t.source.name} to {t.target.name}"
                        for t in _REL.values() if t.source != t.target)
_STUBBED = frozenset(t.name for t in NODE_TABLES if t.stubbed)  # tables that hold stub rows
# The column that places a node: shard(id) for entities, shard(document_id) for chunks. Stubs keep it.
OWNER_KEY: dict[str, str] = {t.name: t.owner for t in NODE_TABLES if t.owner is not None}

AggKind = Literal["count", "sum", "avg", "min", "max", "collect"]


@dataclass(frozen=True, slots=True)
class AggSpec:
    """An aggregate item: `column` is its place in the result, `partials` the shard-row columns
    the merge reads (the visible column itself, or hidden partial columns)."""

    column: int
    kind: AggKind
    distinct: bool
    partials: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MergeSpec:
    names: tuple[str, ...]  # fallback column names, used only when no shard answered
    aggs: tuple[AggSpec, ...]  # empty: no aggregation
    distinct: bool
    order: tuple[tuple[int, bool], ...]  # (shard-row column, descending)
    tiebreak: tuple[int, ...]  # identity columns; empty: all visible columns, canonically
    skip: int
    limit: int | None
    perm: tuple[int, ...] = ()  # shard column of each merge column; empty: the same order

    @property
    def width(self) -> int:
        return len(self.names)


@dataclass(frozen=True, slots=True)
class FarEnd:
    """How to gather the bindings of a relationship pattern whose far end is needed in full."""

    gather: str  # rows: anchor columns, rel columns, far columns, then "stored anchor->far"
    anchor_table: str
    far_table: str
    rel_table: str
    anchor_cols: tuple[str, ...]
    far_cols: tuple[str, ...]
    rel_cols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    kind: Literal["node", "rel", "far_end"]
    query: str  # runs on every shard ("node", "rel") or on the gathered sub-graph ("far_end")
    params: dict[str, Any]  # the user's parameters the query uses
    merge: MergeSpec
    probe: str | None = None  # "rel": (id, owner key) of far ends that are stubs where stored
    far_table: str | None = None  # table of the far end ("rel", "far_end")
    far_end: FarEnd | None = None


# ---------------------------------------------------------------------------------------------------
# Parsing the supported subset

_EXPR_KEYWORDS = frozenset({
    "and", "or", "xor", "not", "in", "is", "null", "true", "false", "case", "when", "then", "else",
    "end", "starts", "ends", "with", "contains", "as", "distinct", "asc", "ascending", "desc",
    "descending", "order", "by", "skip", "limit", "return", "where", "match", "optional", "unwind",
    "union", "exists",
})
AGGREGATES: frozenset[str] = frozenset(get_args(AggKind))
# Every aggregate Kuzu 0.11.3 knows (CALL show_functions()); the others are refused by name.
KUZU_AGGREGATES = frozenset(AGGREGATES | {"count_star"})
_BLOCKED_FUNCTIONS: dict[str, str] = {
    **{f: "it exposes shard-local internal ids" for f in ("id", "internal_id", "offset")},
    **{f: "it reaches nodes beyond the pattern's variables, which may live on other shards"
       for f in ("start_node", "end_node", "nodes", "rels", "relationships", "properties", "length",
                 "cost", "is_trail", "is_acyclic")},
    **{f: "its result changes from run to run" for f in ("current_date", "current_timestamp",
                                                         "gen_random_uuid")},
    **{f: "it changes a sequence" for f in ("nextval", "currval")},
    "copy_json": "it is internal to COPY",
    "count_star": "write count(*)",
}
_CLAUSES_REFUSED: dict[str, str] = {
    "optional": "OPTIONAL MATCH is not supported",
    "with": "WITH is not supported: write one MATCH ... RETURN",
    "unwind": "UNWIND is not supported",
    "union": "UNION is not supported: run the queries separately",
    "explain": "EXPLAIN is not supported",
    "profile": "PROFILE is not supported",
    "shortestpath": "shortestPath is not supported: use torua.graph.neighbors",
    "allshortestpaths": "allShortestPaths is not supported: use torua.graph.neighbors",
}
_HOPS = ("hops may lie on different shards; use torua.graph.neighbors or torua.rag.retrieve")


@dataclass(frozen=True, slots=True)
class _Node:
    var: str  # as rendered in queries (user text, or a generated name)
    key: str  # normalised name
    table: str
    props: tuple[Tok, ...]  # the inline map, braces included; empty if none


@dataclass(frozen=True, slots=True)
class _Rel:
    var: str
    key: str
    table: str
    props: tuple[Tok, ...]
    direction: Literal["->", "<-", "-"]


@dataclass(frozen=True, slots=True)
class _Agg:
    kind: AggKind
    distinct: bool
    arg: tuple[Tok, ...]  # empty for count(*)


@dataclass(frozen=True, slots=True)
class _Item:
    expr: tuple[Tok, ...]
    alias: Tok | None
    agg: _Agg | None

    @property
    def text(self) -> str:
        return render(self.expr) + (f" AS {self.alias.text}" if self.alias else "")


@dataclass(frozen=True, slots=True)
class _Query:
    left: _Node
    rel: _Rel | None
    right: _Node | None
    where: tuple[Tok, ...]
    distinct: bool
    items: tuple[_Item, ...]
    order: tuple[tuple[tuple[Tok, ...], bool], ...]
    order_text: str  # the user's ORDER BY keys, rendered
    skip: int
    limit: int | None


def _walk(toks: Sequence[Tok]) -> Iterator[tuple[int, Tok, int]]:
    """(index, token, depth): depth counts brackets and CASE ... END, both of which hide commas,
    ANDs and clause words from the level being split."""
    depth = 0
    for i, t in enumerate(toks):
        after_dot = i > 0 and toks[i - 1].is_op(".")
        if (t.kind == "op" and t.text in ")]}") or (t.is_word("end") and not after_dot):
            depth -= 1
        yield i, t, depth
        if (t.kind == "op" and t.text in "([{") or (t.is_word("case") and not after_dot):
            depth += 1


def _split(toks: Sequence[Tok], is_sep: Callable[[Sequence[Tok], int, Tok], bool]) -> list[tuple[Tok, ...]]:
    parts: list[tuple[Tok, ...]] = []
    start = 0
    for i, t, depth in _walk(toks):
        if depth == 0 and is_sep(toks, i, t):
            parts.append(tuple(toks[start:i]))
            start = i + 1
    parts.append(tuple(toks[start:]))
    return parts


def _is_comma(_toks: Sequence[Tok], _i: int, t: Tok) -> bool:
    return t.is_op(",")


def _is_and(toks: Sequence[Tok], i: int, t: Tok) -> bool:
    return t.is_word("and") and not (i > 0 and toks[i - 1].is_op("."))


class _Parser:
    def __init__(self, toks: list[Tok], params: dict[str, Any]) -> None:
        self.toks = toks
        self.params = params
        self.i = 0
        self.generated = 0

    # -- token helpers

    def peek(self, ahead: int = 0) -> Tok | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise BadRequest("the query ends too early")
        self.i += 1
        return t

    def accept_op(self, text: str) -> bool:
        t = self.peek()
        if t is not None and t.is_op(text):
            self.i += 1
            return True
        return False

    def expect_op(self, text: str, what: str) -> None:
        if not self.accept_op(text):
            raise BadRequest(f"expected '{text}' {what}, found {_found(self.peek())}")

    def accept_word(self, *keys: str) -> bool:
        t = self.peek()
        if t is not None and t.is_word(*keys):
            self.i += 1
            return True
        return False

    def clause_end(self, *keys: str) -> int:
        """Index of the first top-level clause word among `keys` (or the end)."""
        rest = self.toks[self.i:]
        for j, t, depth in _walk(rest):
            if depth == 0 and t.is_word(*keys) and not (j > 0 and rest[j - 1].is_op(".")):
                return self.i + j
        return len(self.toks)

    # -- the query

    def query(self) -> _Query:
        if not self.accept_word("match"):
            raise BadRequest(f"a query must start with MATCH, found {_found(self.peek())}")
        left, rel, right = self.pattern()
        end = self.clause_end("return")
        where: tuple[Tok, ...] = ()
        if self.accept_word("where"):
            where = tuple(self.toks[self.i:end])
            if not where:
                raise BadRequest("WHERE needs a condition")
        elif self.i != end:
            raise BadRequest(f"expected WHERE or RETURN after the pattern, found {_found(self.peek())}")
        self.i = end
        if not self.accept_word("return"):
            raise BadRequest("the query needs a RETURN")
        distinct = self.accept_word("distinct")
        end = self.clause_end("order", "skip", "limit")
        items = tuple(self.item(t) for t in _split(self.toks[self.i:end], _is_comma))
        self.i = end
        order, order_text = self.order_by()
        skip = self.count_clause("skip") or 0
        limit = self.count_clause("limit")
        if self.peek() is not None:
            raise BadRequest(f"unexpected {_found(self.peek())} at the end of the query")
        return _Query(left, rel, right, where, distinct, items, order, order_text, skip, limit)

    def pattern(self) -> tuple[_Node, _Rel | None, _Node | None]:
        t0, t1 = self.peek(), self.peek(1)
        if t0 is not None and t1 is not None and t0.kind in ("word", "ident") and t1.is_op("="):
            raise BadRequest("path variables (p = ...) are not supported: " + _HOPS)
        left = self.node()
        rel = right = None
        if self.at_rel():
            rel = self.rel()
            right = self.node()
        if self.at_rel():
            raise BadRequest("two or more relationships in one pattern are not supported: " + _HOPS)
        t = self.peek()
        if t is not None and t.is_op(","):
            raise BadRequest("several patterns in one MATCH are not supported: " + _HOPS)
        return left, rel, right

    def at_rel(self) -> bool:
        t = self.peek()
        return t is not None and (t.is_op("-") or t.is_op("<"))

    def node(self) -> _Node:
        self.expect_op("(", "to open a node pattern")
        var = self.variable()
        table = None
        if self.accept_op(":"):
            table = self.table(_NODE_TABLES, "node")
            t = self.peek()
            if t is not None and t.text in (":", "|"):
                raise BadRequest("a node pattern may have only one label")
        props = self.inline_map()
        self.expect_op(")", "to close the node pattern")
        return self.named(var, table or "", props, "n")

    def rel(self) -> _Rel:
        left_arrow = self.accept_op("<")
        self.expect_op("-", "in the relationship pattern")
        if not self.accept_op("["):
            raise BadRequest("write the relationship with its type in brackets, e.g. -[r:RELATES]->")
        var = self.variable()
        if not self.accept_op(":"):
            raise BadRequest("give the relationship type: -[r:RELATES]-> or -[m:MENTIONS]->")
        table = self.table(_REL_TABLES, "relationship")
        t = self.peek()
        if t is not None and t.is_op("|"):
            raise BadRequest("alternative relationship types (|) are not supported")
        if t is not None and t.is_op("*"):
            raise BadRequest("variable-length relationships (*) are not supported: " + _HOPS)
        props = self.inline_map()
        self.expect_op("]", "to close the relationship pattern")
        self.expect_op("-", "after the relationship")
        right_arrow = self.accept_op(">")
        if left_arrow and right_arrow:
            raise BadRequest("a relationship pattern may point one way (-> or <-) or none, not both")
        direction: Literal["->", "<-", "-"] = "->" if right_arrow else "<-" if left_arrow else "-"
        node = self.named(var, table, props, "r")
        return _Rel(node.var, node.key, table, props, direction)

    def variable(self) -> Tok | None:
        t = self.peek()
        if t is not None and t.kind in ("word", "ident"):
            if t.kind == "word" and t.key in _EXPR_KEYWORDS:
                raise BadRequest(f"{t.text} cannot name a variable; quote it with backticks")
            self.i += 1
            return t
        return None

    def table(self, tables: dict[str, str], what: str) -> str:
        t = self.take()
        if t.kind not in ("word", "ident") or t.key not in tables:
            known = ", ".join(tables.values())
            raise BadRequest(f"unknown {what} table {t.text}: graph.query reads {known}")
        return tables[t.key]

    def inline_map(self) -> tuple[Tok, ...]:
        t = self.peek()
        if t is None or not t.is_op("{"):
            return ()
        start = self.i
        for j, tok, depth in _walk(self.toks[start:]):
            if depth == 0 and tok.is_op("}"):
                self.i = start + j + 1
                return tuple(self.toks[start:self.i])
        raise BadRequest("unclosed { in a pattern")

    def named(self, var: Tok | None, table: str, props: tuple[Tok, ...], prefix: str) -> _Node:
        if var is None:
            self.generated += 1
            name = f"{RESERVED_PREFIX}{prefix}{self.generated}"
            return _Node(name, name, table, props)
        return _Node(var.text, var.key, table, props)

    def item(self, toks: tuple[Tok, ...]) -> _Item:
        if not toks:
            raise BadRequest("empty item in RETURN")
        if len(toks) == 1 and toks[0].is_op("*"):
            raise BadRequest("RETURN * is not supported: name the returned items")
        alias = None
        if len(toks) >= 3 and toks[-2].is_word("as") and toks[-1].kind in ("word", "ident"):
            alias, toks = toks[-1], toks[:-2]
        return _Item(toks, alias, _aggregate_of(toks))

    def order_by(self) -> tuple[tuple[tuple[tuple[Tok, ...], bool], ...], str]:
        if not self.accept_word("order"):
            return (), ""
        if not self.accept_word("by"):
            raise BadRequest("expected BY after ORDER")
        end = self.clause_end("skip", "limit")
        text = render(self.toks[self.i:end])
        keys = []
        for part in _split(self.toks[self.i:end], _is_comma):
            desc = False
            if part and part[-1].is_word("asc", "ascending", "desc", "descending"):
                desc, part = part[-1].key.startswith("desc"), part[:-1]
            if not part:
                raise BadRequest("empty ORDER BY key")
            keys.append((part, desc))
        self.i = end
        return tuple(keys), text

    def count_clause(self, word: str) -> int | None:
        if not self.accept_word(word):
            return None
        t = self.take()
        nxt = self.peek()
        if nxt is not None and not nxt.is_word("limit"):
            raise BadRequest(f"{word.upper()} takes a non-negative integer or a $parameter, not an expression")
        if t.kind == "number" and t.text.isdigit():
            return int(t.text)
        if t.kind == "param":
            value = self.params[t.text[1:]]
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
            raise BadRequest(f"{word.upper()} parameter {t.text} must be a non-negative integer")
        raise BadRequest(f"{word.upper()} takes a non-negative integer or a $parameter")


def _found(t: Tok | None) -> str:
    return "the end of the query" if t is None else f"{t.text!r} at offset {t.pos}"


def _calls(toks: Sequence[Tok]) -> Iterator[tuple[int, str]]:
    """(index, lower-case name) of every function call."""
    for i, t in enumerate(toks[:-1]):
        if t.kind in ("word", "ident") and toks[i + 1].is_op("(") and t.key not in _EXPR_KEYWORDS:
            if not (i > 0 and toks[i - 1].is_op(".")):
                yield i, t.key


def _close(toks: Sequence[Tok], open_at: int) -> int:
    """Index of the bracket closing the one at `open_at`."""
    for j, _t, depth in _walk(toks[open_at:]):
        if j > 0 and depth == 0:
            return open_at + j
    raise BadRequest("unbalanced brackets")


def _aggregate_of(expr: tuple[Tok, ...]) -> _Agg | None:
    calls = [(i, name) for i, name in _calls(expr) if name in KUZU_AGGREGATES]
    if not calls:
        return None
    i, name = calls[0]
    if i != 0 or _close(expr, 1) != len(expr) - 1:
        raise BadRequest(f"aggregate {expr[i].text}() inside an expression is not supported:"
                         " return it as an item of its own")
    if len(calls) > 1:
        raise BadRequest("nested aggregates are not supported")
    arg = expr[2:-1]
    distinct = bool(arg) and arg[0].is_word("distinct")
    arg = arg[1:] if distinct else arg
    if name == "count" and len(arg) == 1 and arg[0].is_op("*"):
        if distinct:
            raise BadRequest("count(DISTINCT *) is not valid: write count(*)")
        arg = ()
    elif not arg:
        raise BadRequest(f"{expr[0].text}() needs an argument")
    if not _is_agg_kind(name):  # count_star: refused by name before parsing
        raise BadRequest(f"aggregate {expr[0].text}() is not supported")
    return _Agg(name, distinct, arg)


def _is_agg_kind(name: str) -> TypeGuard[AggKind]:
    return name in AGGREGATES


# ---------------------------------------------------------------------------------------------------
# Whole-query checks that do not depend on the clause structure


def _refuse_unsupported(toks: Sequence[Tok]) -> None:
    matches = returns = 0
    # Expressions start at WHERE or RETURN: a pattern such as (a)-->(b) after that is a pattern
    # expression, which would reach beyond the binding (and its shard).
    expr_start = next((i for i, t in enumerate(toks) if t.is_word("where", "return")), len(toks))
    for i, t in enumerate(toks):
        prev = toks[i - 1] if i else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        after_dot = prev is not None and prev.is_op(".")
        if t.kind in ("word", "ident") and t.key.startswith(RESERVED_PREFIX):
            raise BadRequest(f"names starting with {RESERVED_PREFIX} are reserved: {t.text}")
        if t.kind == "param" and t.text[1:].startswith(RESERVED_PREFIX):
            raise BadRequest(f"parameter names starting with {RESERVED_PREFIX} are reserved: {t.text}")
        if t.kind != "word" or after_dot:
            if t.is_op("-") and nxt is not None and (nxt.is_op("-") or nxt.is_op("[")) and i > expr_start:
                raise BadRequest("pattern expressions such as (a)-->(b) inside WHERE or RETURN are not"
                                 f" supported (offset {t.pos}): {_HOPS}")
            continue
        if t.key == "with" and prev is not None and prev.is_word("starts", "ends"):
            continue
        if t.key in _CLAUSES_REFUSED:
            raise BadRequest(_CLAUSES_REFUSED[t.key])
        if t.key in ("exists", "count") and nxt is not None and nxt.is_op("{"):
            raise BadRequest(f"{t.text.upper()} {{ ... }} subqueries are not supported: {_HOPS}")
        matches += t.key == "match"
        returns += t.key == "return"
        if matches > 1:
            raise BadRequest("several MATCH clauses are not supported: " + _HOPS)
        if returns > 1:
            raise BadRequest("only one RETURN is supported")
    for _i, name in _calls(list(toks)):
        if name in _BLOCKED_FUNCTIONS:
            raise BadRequest(f"function {name}() is not supported: {_BLOCKED_FUNCTIONS[name]}")


# ---------------------------------------------------------------------------------------------------
# Variables used by expressions


def _refs(toks: Sequence[Tok]) -> Iterator[tuple[int, str, str | None]]:
    """(index, variable, property or None when used whole) for every name that may be a variable.

    Over-approximates on purpose: a name that could be a variable is reported as one, so a planner
    decision taken from these ("the far end is only used through its id") is never wrong."""
    stack: list[str] = []
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text in "([{":
            stack.append(t.text)
            continue
        if t.kind == "op" and t.text in ")]}":
            if stack:
                stack.pop()
            continue
        if t.kind not in ("word", "ident") or (t.kind == "word" and t.key in _EXPR_KEYWORDS):
            continue
        prev = toks[i - 1] if i else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if prev is not None and prev.is_op("."):
            continue  # a property name
        if nxt is not None and nxt.is_op("("):
            continue  # a function name
        in_map = bool(stack) and stack[-1] == "{"
        if in_map and nxt is not None and nxt.is_op(":") and prev is not None and prev.text in ("{", ","):
            continue  # a map key
        if prev is not None and prev.is_op(":") and not (stack and stack[-1] in "{["):
            continue  # a label in a label test (n:Entity)
        prop = None
        if nxt is not None and nxt.is_op(".") and i + 2 < len(toks) and toks[i + 2].kind in ("word", "ident"):
            prop = toks[i + 2].key
        yield i, t.key, prop


def _norm(toks: Sequence[Tok]) -> tuple[str, ...]:
    return tuple(t.key for t in toks)


# ---------------------------------------------------------------------------------------------------
# Planning


def plan_query(cypher: str, params: dict[str, Any]) -> Plan:
    """Validate `cypher` and plan it, or raise BadRequest saying what is refused and why."""
    toks = check_read_only(cypher, params)
    _refuse_unsupported(toks)
    q = _Parser(toks, params).query()
    _check_names(q)
    used = {t.text[1:] for t in toks if t.kind == "param"}
    user_params = {k: v for k, v in params.items() if k in used}
    if q.rel is None:
        return _node_plan(q, user_params)
    return _rel_plan(q, user_params)


def _check_names(q: _Query) -> None:
    pattern = [x for x in (q.left, q.rel, q.right) if x is not None]
    keys = [x.key for x in pattern]
    if len(set(keys)) != len(keys):
        raise BadRequest("a variable appears twice in the pattern; compare ids in WHERE instead")
    for item in q.items:
        if item.alias is not None and item.alias.key in keys:
            raise BadRequest(f"alias {item.alias.text} hides the pattern variable of the same name")
    if q.rel is not None:
        for toks in _expressions(q):
            for _i, var, prop in _refs(toks):
                if var == q.rel.key and prop is None:
                    raise BadRequest(f"the whole relationship {q.rel.var} cannot be used: use its"
                                     " properties (type, weight, properties, chunks) or count(*)")


def _expressions(q: _Query) -> Iterator[tuple[Tok, ...]]:
    yield q.where
    for item in q.items:
        yield item.expr
    for toks, _desc in q.order:
        yield toks
    for x in (q.left, q.rel, q.right):
        if x is not None:
            yield x.props


def _where(user: Sequence[Tok], filters: Sequence[str]) -> str:
    conds = ([f"({render(user)})"] if user else []) + list(filters)
    return f" WHERE {' AND '.join(conds)}" if conds else ""


def _node_plan(q: _Query, params: dict[str, Any]) -> Plan:
    n = q.left
    if not n.table:
        raise BadRequest("give the node label: (n:Entity), (n:Chunk) or (n:Document)")
    filters = [f"{n.var}.stub = false"] if n.table in _STUBBED else []
    body = f"MATCH {_render_node(n)}{_where(q.where, filters)}"
    query, merge = _finish(q, body, [f"{n.var}.id"])
    return Plan("node", query, params, merge)


def _render_node(n: _Node) -> str:
    props = f" {render(n.props)}" if n.props else ""
    return f"({n.var}:{n.table}{props})"


def _render_rel(r: _Rel, direction: str | None = None) -> str:
    props = f" {render(r.props)}" if r.props else ""
    inner = f"[{r.var}:{r.table}{props}]"
    return {"->": f"-{inner}->", "<-": f"<-{inner}-", "-": f"-{inner}-"}[direction or r.direction]


def _infer_tables(q: _Query) -> tuple[_Node, _Node]:
    """Fill in or check the node labels a relationship table allows."""
    assert q.rel is not None and q.right is not None
    left, right, rel = q.left, q.right, q.rel
    src, dst = _REL[rel.table].source.name, _REL[rel.table].target.name
    other = {src: dst, dst: src}
    if src == dst or rel.direction == "->":  # RELATES joins entities whichever way it points
        want = (src, dst)
    elif rel.direction == "<-":
        want = (dst, src)
    elif src in (left.table, right.table) or dst in (left.table, right.table):
        known = left.table or other[right.table]
        want = (known, other.get(known, ""))
    else:
        raise BadRequest(f"label at least one end of an undirected {rel.table} pattern:"
                         f" (c:{src})-[m:{rel.table}]-(e)")
    for node, table in ((left, want[0]), (right, want[1])):
        if node.table and node.table != table:
            raise BadRequest(f"{rel.table} connects {want[0]} and {want[1]} here, not {node.table}"
                             f" ({_ASYMMETRIC})")
    return (_Node(left.var, left.key, want[0], left.props), _Node(right.var, right.key, want[1], right.props))


def _rel_plan(q: _Query, params: dict[str, Any]) -> Plan:
    assert q.rel is not None
    left, right = _infer_tables(q)
    rel = q.rel
    whole = _used_beyond_id(q)
    # Every binding is stored where its anchor is real; the far end may be a stub there. Anchor on
    # the end the query reads in full, so the far end is needed only through its id when possible.
    anchor, far = (right, left) if whole[right.key] and not whole[left.key] else (left, right)
    pattern = f"{_render_node(left)}{_render_rel(rel)}{_render_node(right)}"
    filters = [f"{anchor.var}.stub = false",
               f"({far.var}.stub = false OR {far.var}.id IN ${REAL_IDS_PARAM})"]
    spec = _REL[rel.table]
    # An edge's key, then its other properties: undirected, a->b and b->a of one type bind the same
    # ends, and their content tells them apart (two edges equal in all of it give equal rows, so
    # their order cannot show).
    ident = ([f"{left.var}.id", *(f"{rel.var}.{c}" for c in spec.key), f"{right.var}.id"]
             + [f"{rel.var}.{c.name}" for c in spec.values])
    query, merge = _finish(q, f"MATCH {pattern}{_where(q.where, filters)}", ident)
    if not whole[far.key]:
        probe = (f"MATCH {pattern}{_where(q.where, [f'{anchor.var}.stub = false', f'{far.var}.stub = true'])}"
                 f" RETURN DISTINCT {far.var}.id AS {RESERVED_PREFIX}id,"
                 f" {far.var}.{OWNER_KEY[far.table]} AS {RESERVED_PREFIX}owner")
        return Plan("rel", query, params, merge, probe=probe, far_table=far.table)
    far_end = _far_end(q, left, right, _needs_embedding(q))
    return Plan("far_end", query, params, merge, far_table=far.table, far_end=far_end)


def _used_beyond_id(q: _Query) -> dict[str, bool]:
    """Per node variable: is anything but its id read (inline map keys count as reads)?"""
    out = {x.key: not _props_only_id(x) for x in (q.left, q.right) if x is not None}
    for toks in _expressions(q):
        for _i, var, prop in _refs(toks):
            if var in out and prop != "id":
                out[var] = True
    return out


def _needs_embedding(q: _Query) -> bool:
    nodes = {q.left.key} | ({q.right.key} if q.right else set())
    for toks in _expressions(q):
        if any(t.key == "embedding" for t in toks if t.kind in ("word", "ident")):
            return True
        if any(var in nodes and prop is None for _i, var, prop in _refs(toks)):
            return True
    return False


def _far_end(q: _Query, anchor: _Node, far: _Node, embedding: bool) -> FarEnd:
    """The gather query: every binding with a real anchor (the pattern's left node), with the rows
    of both ends and of the relationship; the far end's row is complete only where it is real, its
    stub flag says when it must be looked up on its own shard."""
    assert q.rel is not None
    rel = q.rel
    pushed = [f"({render(c)})" for c in _pushable(q, anchor, far)]
    far_plain = _Node(far.var, far.key, far.table, far.props if _props_only_id(far) else ())
    anchor_cols = _columns(anchor.table, embedding)
    far_cols = _columns(far.table, embedding)
    rel_cols = TABLE_COLUMNS[rel.table]
    ret = ", ".join([f"{anchor.var}.{c}" for c in anchor_cols] + [f"{rel.var}.{c}" for c in rel_cols]
                    + [f"{far.var}.{c}" for c in far_cols])
    where = _where((), [f"{anchor.var}.stub = false", *pushed])

    def one(direction: str, stored_forward: bool) -> str:
        return (f"MATCH {_render_node(anchor)}{_render_rel(rel, direction)}{_render_node(far_plain)}"
                f"{where} RETURN {ret}, {str(stored_forward).lower()} AS {RESERVED_PREFIX}fwd")

    if rel.table == "MENTIONS":  # stored Chunk -> Entity whatever the pattern says
        gather = one("->", True) if anchor.table == "Chunk" else one("<-", False)
    elif rel.direction == "-":
        gather = f"{one('->', True)} UNION ALL {one('<-', False)}"
    else:
        gather = one(rel.direction, rel.direction == "->")
    return FarEnd(gather, anchor.table, far.table, rel.table, anchor_cols, far_cols, rel_cols)


def _columns(table: str, embedding: bool) -> tuple[str, ...]:
    return tuple(c for c in TABLE_COLUMNS[table] if embedding or c != "embedding")


def _props_only_id(node: _Node) -> bool:
    if not node.props:
        return True
    keys = [p[0] for p in _split(node.props[1:-1], _is_comma) if p]
    return all(k.key == "id" for k in keys)


def _pushable(q: _Query, anchor: _Node, far: _Node) -> list[tuple[Tok, ...]]:
    """WHERE conjuncts that read only the anchor, the relationship and the far end's id: true or
    false the same way whether the far end is a stub or not, so they can filter on the shards."""
    if not q.where:
        return []
    if any(depth == 0 and t.is_word("or", "xor") for _i, t, depth in _walk(q.where)):
        conjuncts = [q.where]
    else:
        conjuncts = _split(q.where, _is_and)
    return [c for c in conjuncts if c and all(var != far.key or prop == "id" for _i, var, prop in _refs(c))]


# ---------------------------------------------------------------------------------------------------
# RETURN, ORDER BY, LIMIT and the merge spec


def _finish(q: _Query, body: str, ident: list[str]) -> tuple[str, MergeSpec]:
    names = tuple(_item_name(it) for it in q.items)
    if any(it.agg is not None for it in q.items):
        return _finish_aggregate(q, body, names)
    if q.distinct:
        order = tuple((_resolve_or_refuse(q, toks, "DISTINCT"), desc) for toks, desc in q.order)
        ret = f"RETURN DISTINCT {', '.join(it.text for it in q.items)}"
        spec = MergeSpec(names, (), True, order, (), q.skip, q.limit)
        return f"{body} {ret}{_order_clause(q.order_text)}", spec
    extra: list[str] = []
    columns: list[tuple[int, bool]] = []
    for toks, desc in q.order:
        col = _resolve(q, toks)
        if col is None:
            col = len(names) + len(extra)
            extra.append(f"{_substitute_aliases(q, toks)} AS {RESERVED_PREFIX}o{len(extra)}")
        columns.append((col, desc))
    tie_names = [f"{RESERVED_PREFIX}t{j}" for j in range(len(ident))]
    tiebreak = tuple(range(len(names) + len(extra), len(names) + len(extra) + len(ident)))
    extra += [f"{e} AS {n}" for e, n in zip(ident, tie_names)]
    ret = f"RETURN {', '.join([it.text for it in q.items] + extra)}"
    order_clause = _order_clause(q.order_text)
    if q.limit is not None:  # identity breaks ties the same way on every shard and in the merge
        order_clause = _order_clause(", ".join(x for x in (q.order_text, *tie_names) if x))
        order_clause += f" LIMIT {q.skip + q.limit}"
    spec = MergeSpec(names, (), False, tuple(columns), tiebreak, q.skip, q.limit)
    return f"{body} {ret}{order_clause}", spec


def _order_clause(keys: str) -> str:
    return f" ORDER BY {keys}" if keys else ""


def _item_name(item: _Item) -> str:
    return item.alias.text.strip("`").replace("``", "`") if item.alias else render(item.expr)


def _resolve(q: _Query, toks: Sequence[Tok]) -> int | None:
    """The item an ORDER BY key names: by alias, or by repeating the item's expression."""
    if len(toks) == 1 and toks[0].kind in ("word", "ident"):
        for k, item in enumerate(q.items):
            if item.alias is not None and item.alias.key == toks[0].key:
                return k
    for k, item in enumerate(q.items):
        if _norm(item.expr) == _norm(toks):
            return k
    if any(name in KUZU_AGGREGATES for _i, name in _calls(toks)):
        raise BadRequest("ORDER BY an aggregate needs that aggregate among the RETURN items")
    return None


def _resolve_or_refuse(q: _Query, toks: Sequence[Tok], why: str) -> int:
    col = _resolve(q, toks)
    if col is None:
        raise BadRequest(f"with {why}, ORDER BY must name a returned item (by its alias or its"
                         f" expression): {render(toks)!r} is neither")
    return col


def _substitute_aliases(q: _Query, toks: Sequence[Tok]) -> str:
    aliases = {it.alias.key: it for it in q.items if it.alias is not None}
    out = list(toks)
    for i, var, _prop in reversed(list(_refs(toks))):
        if var in aliases:
            first, *rest = aliases[var].expr
            out[i:i + 1] = [Tok("op", "(", -1, toks[i].space), replace(first, space=False), *rest,
                            Tok("op", ")", -1, False)]
    return render(out)


def _finish_aggregate(q: _Query, body: str, names: tuple[str, ...]) -> tuple[str, MergeSpec]:
    """Items stay as written (so Kuzu names the columns), with hidden partials appended; on the shard
    the columns go keys, then plain aggregates, then DISTINCT ones: kuzu 0.11.3 returns NULL for a
    plain aggregate that follows a DISTINCT one in a grouped RETURN. `perm` restores the order."""
    order = tuple((_resolve_or_refuse(q, toks, "aggregates"), desc) for toks, desc in q.order)
    columns: list[tuple[str, int]] = [(it.text, _rank(it.agg)) for it in q.items]  # (text, rank)
    aggs: list[AggSpec] = []
    for k, item in enumerate(q.items):
        if item.agg is None:
            continue
        a = item.agg
        arg = render(a.arg)
        first = len(columns)
        if a.distinct and a.kind in ("count", "sum", "avg"):
            columns.append((f"collect(DISTINCT {arg}) AS {RESERVED_PREFIX}p{first}", 2))
            partials: tuple[int, ...] = (first,)
        elif a.kind == "avg" and not a.distinct:
            columns.append((f"sum({arg}) AS {RESERVED_PREFIX}p{first}", 1))
            columns.append((f"count({arg}) AS {RESERVED_PREFIX}p{first + 1}", 1))
            partials = (first, first + 1)
        else:
            partials = (k,)
        aggs.append(AggSpec(k, a.kind, a.distinct, partials))
    shard_order = sorted(range(len(columns)), key=lambda i: columns[i][1])  # stable
    perm = tuple(shard_order.index(i) for i in range(len(columns)))
    distinct = "DISTINCT " if q.distinct else ""
    ret = f"RETURN {distinct}{', '.join(columns[i][0] for i in shard_order)}"
    spec = MergeSpec(names, tuple(aggs), q.distinct, order, (), q.skip, q.limit, perm)
    return f"{body} {ret}{_order_clause(q.order_text)}", spec


def _rank(agg: _Agg | None) -> int:
    return 0 if agg is None else 2 if agg.distinct else 1


# Up to this many ids are looked up one primary-key probe each (UNION ALL): in kuzu 0.11.3 `UNWIND
# $ids ... MATCH (n {id: i})` scans the whole table (~25 ms at 300k entities, whatever the ids), a
# probe costs ~0.4 ms. Beyond it the scan wins on large shards and probes only add planning.
RESOLVE_PROBES_MAX = 8


def resolve_query(table: str, columns: Sequence[str], ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """A query, and its params, for which of `ids` are real nodes of `table` here, with these columns."""
    stub = " WHERE n.stub = false" if table in _STUBBED else ""
    ret = f"{stub} RETURN {', '.join(f'n.{c}' for c in columns)}"
    if 0 < len(ids) <= RESOLVE_PROBES_MAX:
        names = [f"{IDS_PARAM}{k}" for k in range(len(ids))]
        query = " UNION ALL ".join(f"MATCH (n:{table} {{id: ${name}}}){ret}" for name in names)
        return query, dict(zip(names, ids))
    return (f"UNWIND ${IDS_PARAM} AS {RESERVED_PREFIX}i MATCH (n:{table} {{id: {RESERVED_PREFIX}i}}){ret}",
            {IDS_PARAM: list(ids)})
