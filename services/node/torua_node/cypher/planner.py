"""The planner of `torua.graph.query`: one read-only Cypher statement to shard queries and a merge.
Pure: no I/O.

The text is first checked (`guard.check_read_only`, over `lexer` tokens). The planner then accepts
one `MATCH` of one pattern — a node, one relationship, or a chain of them (multi-hop, variable-length,
untyped, shortest paths, cycles: planned as frontier exchanges, `chain.py`) — then `WHERE`,
`RETURN [DISTINCT]`, `ORDER BY`, `SKIP`, `LIMIT` (or an OPTIONAL MATCH / WITH pipeline of them, planned
as walks clause by clause: `_pipeline_plan`), and turns it into shard queries plus a `MergeSpec`
whose merge gives what one database holding all the data would return. Anything it cannot prove
exact is refused. Every query it builds
is rendered from the checked tokens, never from the user's text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeGuard, get_args

from torua.errors import BadRequest
from torua_node.cypher.chain import MAX_VAR_LENGTH, ChainHop, ChainNode, ChainPlan
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
    kind: Literal["node", "rel", "far_end", "chain"]
    # runs on every shard ("node", "rel") or on the gathered sub-graph ("far_end", "chain")
    query: str
    params: dict[str, Any]  # the user's parameters the query uses
    merge: MergeSpec
    probe: str | None = None  # "rel": (id, owner key) of far ends that are stubs where stored
    far_table: str | None = None  # table of the far end ("rel", "far_end")
    far_end: FarEnd | None = None
    chain: ChainPlan | None = None  # "chain": how to gather the sub-graph (cypher/chain.py)
    # Whole nodes in the answer keep their embedding only when the query names it (`v.embedding`).
    embeddings: bool = False


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
    **{f: "its result changes from run to run" for f in ("current_date", "current_timestamp",
                                                         "gen_random_uuid")},
    **{f: "it changes a sequence" for f in ("nextval", "currval")},
    "copy_json": "it is internal to COPY",
    "count_star": "write count(*)",
}
# Functions of paths and relationships: answered on a gathered sub-graph (a chain plan) only.
_PATH_FUNCTIONS = frozenset({"start_node", "end_node", "nodes", "rels", "relationships", "properties", "length",
                             "cost", "is_trail", "is_acyclic"})
_CLAUSES_REFUSED: dict[str, str] = {
    "unwind": "UNWIND is not supported",
    "union": "UNION is not supported: run the queries separately",
    "explain": "EXPLAIN is not supported",
    "profile": "PROFILE is not supported",
    "shortestpath": "shortestPath() is not Kuzu's syntax: write MATCH p = (a)-[:RELATES* SHORTEST 1..5]->(b)",
    "allshortestpaths": "allShortestPaths() is not Kuzu's syntax: write MATCH p = (a)-[:RELATES* ALL SHORTEST"
                        " 1..5]->(b)",
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
    table: str  # "" when not exactly one table is named
    props: tuple[Tok, ...]
    direction: Literal["->", "<-", "-"]
    tables: tuple[str, ...] = ()  # the named tables (T1|T2); empty: any, inferred from the schema
    hops: tuple[int, int] | None = None  # *lo..hi; None: exactly one relationship
    mode: str = ""  # "shortest", "all shortest", "trail", "acyclic" or "" (walk)
    named: bool = True  # the user named it (not a generated variable)
    extra: tuple[Tok, ...] = ()  # after *lo..hi: an inline map or (r, n | WHERE ...), as written


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
class _Path:
    """One comma-separated pattern of a MATCH."""

    path: Tok | None
    nodes: tuple[_Node, ...]
    rels: tuple[_Rel, ...]


@dataclass(frozen=True, slots=True)
class _Clause:
    """One clause of an OPTIONAL MATCH / WITH pipeline: tokens [start, end) of the query."""

    kind: Literal["match", "optional", "with"]
    start: int
    end: int
    paths: tuple[_Path, ...] = ()  # MATCH, OPTIONAL MATCH
    where: tuple[Tok, ...] = ()
    distinct: bool = False  # WITH
    items: tuple[_Item, ...] = ()
    order: tuple[tuple[tuple[Tok, ...], bool], ...] = ()
    order_text: str = ""
    skip: Tok | None = None
    limit: Tok | None = None


@dataclass(frozen=True, slots=True)
class _Query:
    nodes: tuple[_Node, ...]
    rels: tuple[_Rel, ...]  # rels[i] joins nodes[i] and nodes[i + 1]
    path: Tok | None  # p in MATCH p = ...
    pattern: tuple[Tok, ...]  # the pattern as written (path variable included)
    where: tuple[Tok, ...]
    distinct: bool
    items: tuple[_Item, ...]
    order: tuple[tuple[tuple[Tok, ...], bool], ...]
    order_text: str  # the user's ORDER BY keys, rendered
    skip: int
    limit: int | None
    more: tuple[_Path, ...] = ()  # the MATCH's other comma-separated patterns (chain plans only)
    clauses: tuple[Tok, ...] = ()  # several MATCH clauses: all of them with their WHEREs, as written
    pipeline: tuple[_Clause, ...] = ()  # OPTIONAL MATCH / WITH: every clause before the RETURN

    @property
    def paths(self) -> tuple[_Path, ...]:
        return (_Path(self.path, self.nodes, self.rels), *self.more)

    @property
    def left(self) -> _Node:
        return self.nodes[0]

    @property
    def rel(self) -> _Rel | None:
        return self.rels[0] if self.rels else None

    @property
    def right(self) -> _Node | None:
        return self.nodes[1] if len(self.nodes) > 1 else None


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
        self.defer_star = False

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
                if t.is_word("with") and j > 0 and rest[j - 1].is_word("starts", "ends"):
                    continue  # STARTS WITH / ENDS WITH: an operator, not the clause
                return self.i + j
        return len(self.toks)

    # -- the query

    def query(self) -> _Query:
        if _is_pipeline(self.toks):
            return self.pipeline()
        first = self.i
        if not self.accept_word("match"):
            raise BadRequest(f"a query must start with MATCH, found {_found(self.peek())}")
        start = self.i
        path, nodes, rels = self.pattern()
        more = []
        while self.accept_op(","):
            more.append(_Path(*self.pattern()))
        pattern = tuple(self.toks[start:self.i])
        wheres = [self.where()]
        while self.accept_word("match"):  # MATCH ... MATCH ...: the patterns join like comma-separated ones
            more.append(_Path(*self.pattern()))
            while self.accept_op(","):
                more.append(_Path(*self.pattern()))
            wheres.append(self.where())
        clauses = tuple(self.toks[first:self.i]) if len(wheres) > 1 else ()
        where = _and_all([w for w in wheres if w])
        if not self.accept_word("return"):
            raise BadRequest("the query needs a RETURN")
        distinct, items, order, order_text, skip, limit = self.return_tail((_Path(path, nodes, rels), *more))
        return _Query(tuple(nodes), tuple(rels), path, pattern, where, distinct, items, order, order_text, skip,
                      limit, tuple(more), clauses)

    def pipeline(self) -> _Query:
        """MATCH / OPTIONAL MATCH / WITH clauses in any order (starting with a MATCH), then RETURN."""
        clauses: list[_Clause] = []
        while True:
            start = self.i
            t = self.peek()
            if self.accept_word("optional"):
                if not self.accept_word("match"):
                    raise BadRequest(f"expected MATCH after OPTIONAL, found {_found(self.peek())}")
                kind: Literal["match", "optional", "with"] = "optional"
            elif self.accept_word("match"):
                kind = "match"
            elif clauses and self.accept_word("with"):
                clauses.append(self.with_clause(start))
                continue
            elif clauses and t is not None and t.is_word("return"):
                break
            elif not clauses:
                raise BadRequest(f"a query must start with MATCH or OPTIONAL MATCH, found {_found(t)}")
            else:
                raise BadRequest(f"expected MATCH, OPTIONAL MATCH, WITH or RETURN, found {_found(t)}")
            paths = [_Path(*self.pattern())]
            while self.accept_op(","):
                paths.append(_Path(*self.pattern()))
            where = self.where()
            clauses.append(_Clause(kind, start, self.i, tuple(paths), where))
        self.expect_word("return")
        self.defer_star = True
        distinct, items, order, order_text, skip, limit = self.return_tail(tuple(p for c in clauses for p in c.paths))
        first = clauses[0].paths[0]
        return _Query(first.nodes, first.rels, first.path, (), (), distinct, items, order, order_text, skip, limit,
                      pipeline=tuple(clauses))

    def return_tail(
        self, paths: tuple[_Path, ...]
    ) -> tuple[bool, tuple[_Item, ...], tuple[tuple[tuple[Tok, ...], bool], ...], str, int, int | None]:
        """What follows RETURN: [DISTINCT] items [ORDER BY ...] [SKIP n] [LIMIT n], then the end."""
        distinct = self.accept_word("distinct")
        end = self.clause_end("order", "skip", "limit")
        items = tuple(it for t in _split(self.toks[self.i:end], _is_comma) for it in self.items(t, paths))
        self.i = end
        order, order_text = self.order_by()
        skip = self.count_clause("skip") or 0
        limit = self.count_clause("limit")
        if self.peek() is not None:
            raise BadRequest(f"unexpected {_found(self.peek())} at the end of the query")
        return distinct, items, order, order_text, skip, limit

    def expect_word(self, key: str) -> None:
        if not self.accept_word(key):
            raise BadRequest(f"expected {key.upper()}, found {_found(self.peek())}")

    def with_clause(self, start: int) -> _Clause:
        """WITH [DISTINCT] items [ORDER BY ...] [SKIP n] [LIMIT n] [WHERE ...]."""
        ends = ("match", "optional", "with", "return", "unwind")
        distinct = self.accept_word("distinct")
        end = self.clause_end("order", "skip", "limit", "where", *ends)
        items = tuple(self.with_item(t) for t in _split(self.toks[self.i:end], _is_comma))
        self.i = end
        order, order_text = self.order_by("where", *ends)
        skip = self.with_count("skip")
        limit = self.with_count("limit")
        where: tuple[Tok, ...] = ()
        if self.accept_word("where"):
            end = self.clause_end(*ends)
            where = tuple(self.toks[self.i:end])
            if not where:
                raise BadRequest("WHERE needs a condition")
            self.i = end
        t = self.peek()
        if t is None or not t.is_word(*ends):
            raise BadRequest(f"expected MATCH, OPTIONAL MATCH, WITH or RETURN after WITH ..., found {_found(t)}")
        return _Clause("with", start, self.i, (), where, distinct, items, order, order_text, skip, limit)

    def with_item(self, toks: tuple[Tok, ...]) -> _Item:
        if not toks:
            raise BadRequest("empty item in WITH")
        if len(toks) == 1 and toks[0].is_op("*"):
            raise BadRequest("WITH * is not supported: name the items")
        if len(toks) == 3 and toks[1].is_op(".") and toks[2].is_op("*"):
            raise BadRequest(f"{render(toks)} in WITH is not supported: pass {toks[0].text} on, or name its properties")
        if len(toks) >= 3 and toks[-2].is_word("as") and toks[-1].kind in ("word", "ident"):
            return _Item(toks[:-2], toks[-1], None)
        if len(toks) == 1 and toks[0].kind in ("word", "ident") and toks[0].key not in _EXPR_KEYWORDS:
            return _Item(toks, None, None)
        raise BadRequest(f"WITH {render(toks)} needs an alias: WITH {render(toks)} AS name")

    def with_count(self, word: str) -> Tok | None:
        if not self.accept_word(word):
            return None
        t = self.take()
        if not ((t.kind == "number" and t.text.isdigit()) or t.kind == "param"):
            raise BadRequest(f"{word.upper()} takes a non-negative integer or a $parameter")
        if t.kind == "param":
            value = self.params[t.text[1:]]
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise BadRequest(f"{word.upper()} parameter {t.text} must be a non-negative integer")
        return t

    def where(self) -> tuple[Tok, ...]:
        """An optional WHERE after a MATCH's patterns, up to the next clause."""
        end = self.clause_end("return", "match", "optional", "with")
        where: tuple[Tok, ...] = ()
        if self.accept_word("where"):
            where = tuple(self.toks[self.i:end])
            if not where:
                raise BadRequest("WHERE needs a condition")
        elif self.i != end:
            raise BadRequest(f"expected WHERE, MATCH, OPTIONAL MATCH, WITH or RETURN after the pattern, found"
                             f" {_found(self.peek())}")
        self.i = end
        return where

    def pattern(self) -> tuple[Tok | None, tuple[_Node, ...], tuple[_Rel, ...]]:
        t0, t1 = self.peek(), self.peek(1)
        path = None
        if t0 is not None and t1 is not None and t0.kind in ("word", "ident") and t1.is_op("="):
            if t0.kind == "word" and t0.key in _EXPR_KEYWORDS:
                raise BadRequest(f"{t0.text} cannot name a path; quote it with backticks")
            path = t0
            self.i += 2
        nodes = [self.node()]
        rels: list[_Rel] = []
        while self.at_rel():
            rels.append(self.rel())
            nodes.append(self.node())
        if path is not None and not rels:
            raise BadRequest("a path variable needs a relationship in its pattern")
        return path, tuple(nodes), tuple(rels)

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
        var = None
        tables: list[str] = []
        props: tuple[Tok, ...] = ()
        extra: tuple[Tok, ...] = ()
        hops = None
        mode = ""
        if self.accept_op("["):
            var = self.variable()
            if self.accept_op(":"):
                tables.append(self.table(_REL_TABLES, "relationship"))
                while self.accept_op("|"):
                    self.accept_op(":")
                    tables.append(self.table(_REL_TABLES, "relationship"))
            if self.accept_op("*"):
                mode, hops = self.var_length()
                start = self.i
                self.skip_to_bracket()  # inline map or (r, n | WHERE ...): evaluated by Kuzu in the end
                extra = tuple(self.toks[start:self.i])
            else:
                props = self.inline_map()
            self.expect_op("]", "to close the relationship pattern")
        self.expect_op("-", "after the relationship")
        right_arrow = self.accept_op(">")
        if left_arrow and right_arrow:
            raise BadRequest("a relationship pattern may point one way (-> or <-) or none, not both")
        direction: Literal["->", "<-", "-"] = "->" if right_arrow else "<-" if left_arrow else "-"
        tables = list(dict.fromkeys(tables))
        table = tables[0] if len(tables) == 1 else ""
        node = self.named(var, table, props, "r")
        return _Rel(node.var, node.key, table, props, direction, tuple(tables), hops, mode, var is not None, extra)

    def var_length(self) -> tuple[str, tuple[int, int]]:
        """After `*`: [SHORTEST | ALL SHORTEST | TRAIL | ACYCLIC] and the bounds lo..hi."""
        mode = ""
        if self.accept_word("all"):
            if not self.accept_word("shortest"):
                raise BadRequest(f"expected SHORTEST after ALL, found {_found(self.peek())}")
            mode = "all shortest"
        elif self.accept_word("shortest"):
            mode = "shortest"
        elif self.accept_word("trail", "acyclic"):
            mode = self.toks[self.i - 1].key
        t = self.peek()
        if t is not None and t.is_word("wshortest"):
            raise BadRequest("weighted shortest paths (WSHORTEST) are not supported: their length in"
                             " relationships has no bound to search within")
        lo = self.bound()
        if self.accept_op("."):
            self.expect_op(".", "in the range lo..hi")
            hi = self.bound()
        else:
            hi = lo
        if hi is None:
            raise BadRequest(f"give variable-length relationships an upper bound of at most {MAX_VAR_LENGTH},"
                             " e.g. -[:RELATES*1..3]->: each step is a round across shards")
        lo = 1 if lo is None else lo
        if lo < 1:
            raise BadRequest("a variable-length relationship's lower bound must be at least 1")
        if hi > MAX_VAR_LENGTH:
            raise BadRequest(f"the upper bound {hi} of a variable-length relationship is over {MAX_VAR_LENGTH}:"
                             " each step is a round across shards")
        if lo > hi:
            raise BadRequest(f"a variable-length relationship's bounds {lo}..{hi} are empty")
        return mode, (lo, hi)

    def bound(self) -> int | None:
        t = self.peek()
        if t is not None and t.kind == "number" and t.text.isdigit():
            self.i += 1
            return int(t.text)
        return None

    def skip_to_bracket(self) -> None:
        for j, tok, depth in _walk(self.toks[self.i:]):
            if depth < 0:  # the bracket opened before this slice
                if tok.is_op("]"):
                    self.i += j
                    return
                break
        raise BadRequest("unclosed [ in a relationship pattern")

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

    def items(self, toks: tuple[Tok, ...], paths: tuple[_Path, ...]) -> list[_Item]:
        """One RETURN item; `v.*` becomes one item per column of v's table (given, or inferred from the
        schema), as Kuzu expands it, less storage detail (the stub flag) and the embedding (ask for
        `v.embedding` by name)."""
        if len(toks) != 3 or not toks[1].is_op(".") or not toks[2].is_op("*"):
            return [self.item(toks)]
        if toks[0].kind not in ("word", "ident"):
            raise BadRequest(f"{render(toks)}: .* follows a variable")
        if self.defer_star:  # a pipeline's: expanded by the planner, which knows what is in scope
            return [_Item(toks, None, None)]
        key = toks[0].key
        try:
            labels, rel_tables = _infer_chain_tables(paths)
        except BadRequest:
            labels, rel_tables = {}, []
        tables = set(labels.get(key, ())) or {n.table for p in paths for n in p.nodes if n.key == key}
        tables |= {t for k, p in enumerate(paths) for i, r in enumerate(p.rels) if r.key == key and r.hops is None
                   for t in (rel_tables[k][i] if rel_tables else r.tables or ("",))}
        if len(tables) != 1 or "" in tables:
            raise BadRequest(f"{render(toks)} needs {toks[0].text} to have one label (e.g. ({toks[0].text}:Entity)),"
                             " or a relationship of one type: the columns depend on the table")
        table = tables.pop()
        cols = [c for c in TABLE_COLUMNS[table] if c not in ("stub", "embedding")]
        first = toks[0]
        return [_Item((replace(first, space=first.space if k == 0 else True), Tok("op", ".", -1, False),
                       Tok("word", c, -1, False)), None, None) for k, c in enumerate(cols)]

    def item(self, toks: tuple[Tok, ...]) -> _Item:
        if not toks:
            raise BadRequest("empty item in RETURN")
        if len(toks) == 1 and toks[0].is_op("*"):
            raise BadRequest("RETURN * is not supported: name the returned items")
        alias = None
        if len(toks) >= 3 and toks[-2].is_word("as") and toks[-1].kind in ("word", "ident"):
            alias, toks = toks[-1], toks[:-2]
        return _Item(toks, alias, _aggregate_of(toks))

    def order_by(self, *ends: str) -> tuple[tuple[tuple[tuple[Tok, ...], bool], ...], str]:
        if not self.accept_word("order"):
            return (), ""
        if not self.accept_word("by"):
            raise BadRequest("expected BY after ORDER")
        end = self.clause_end("skip", "limit", *ends)
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


def _and_all(conditions: list[tuple[Tok, ...]]) -> tuple[Tok, ...]:
    """Several WHERE conditions as one conjunction (for analysis: which conjuncts prune the walk)."""
    if len(conditions) <= 1:
        return conditions[0] if conditions else ()
    out: list[Tok] = []
    for c in conditions:
        if out:
            out.append(Tok("word", "AND", -1, True))
        if any(depth == 0 and t.is_word("or", "xor") for _i, t, depth in _walk(c)):
            c = (Tok("op", "(", -1, True), replace(c[0], space=False), *c[1:], Tok("op", ")", -1, False))
        out.extend(c)
    return tuple(out)


def _is_pipeline(toks: Sequence[Tok]) -> bool:
    """Whether the query has OPTIONAL MATCH or WITH clauses (planned as a pipeline)."""
    for i, t, depth in _walk(toks):
        prev = toks[i - 1] if i else None
        if depth == 0 and t.is_word("optional", "with") and not (prev is not None and (
                prev.is_op(".") or prev.is_word("starts", "ends"))):
            return True
    return False


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


def _refuse_unsupported(toks: Sequence[Tok]) -> set[str]:
    """Refuse what no plan supports; return the path functions used (only a chain plan takes them)."""
    returns = 0
    # Expressions start at WHERE or RETURN: a pattern such as (a)-->(b) after that is a pattern
    # expression, which would reach beyond the binding (and its shard).
    # Expressions run from a WHERE or RETURN to the next MATCH. (At depth 0 only: a variable-length
    # relationship's own `(r, n | WHERE ...)` is part of its pattern.)
    in_expr: list[bool] = []
    inside = False
    for i, t, depth in _walk(toks):
        if depth == 0 and t.is_word("where", "return", "match", "optional", "with") and not (
                i and toks[i - 1].is_word("starts", "ends")):
            inside = not t.is_word("match", "optional")
        in_expr.append(inside)
    for i, t in enumerate(toks):
        prev = toks[i - 1] if i else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        after_dot = prev is not None and prev.is_op(".")
        if t.kind in ("word", "ident") and t.key.startswith(RESERVED_PREFIX):
            raise BadRequest(f"names starting with {RESERVED_PREFIX} are reserved: {t.text}")
        if t.kind == "param" and t.text[1:].startswith(RESERVED_PREFIX):
            raise BadRequest(f"parameter names starting with {RESERVED_PREFIX} are reserved: {t.text}")
        if t.kind != "word" or after_dot:
            if t.is_op("-") and nxt is not None and (nxt.is_op("-") or nxt.is_op("[")) and in_expr[i]:
                raise BadRequest("pattern expressions such as (a)-->(b) inside WHERE or RETURN are not"
                                 f" supported (offset {t.pos}): {_HOPS}")
            continue
        if t.key == "with" and prev is not None and prev.is_word("starts", "ends"):
            continue
        if t.key in _CLAUSES_REFUSED:
            raise BadRequest(_CLAUSES_REFUSED[t.key])
        if t.key in ("exists", "count") and nxt is not None and nxt.is_op("{"):
            raise BadRequest(f"{t.text.upper()} {{ ... }} subqueries are not supported: {_HOPS}")
        returns += t.key == "return"
        if returns > 1:
            raise BadRequest("only one RETURN is supported")
    path_functions = set()
    for _i, name in _calls(list(toks)):
        if name in _BLOCKED_FUNCTIONS:
            raise BadRequest(f"function {name}() is not supported: {_BLOCKED_FUNCTIONS[name]}")
        if name in _PATH_FUNCTIONS:
            path_functions.add(name)
    return path_functions


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
    path_functions = _refuse_unsupported(toks)
    q = _Parser(toks, params).query()
    used = {t.text[1:] for t in toks if t.kind == "param"}
    user_params = {k: v for k, v in params.items() if k in used}
    embeddings = any(t.key == "embedding" or (t.kind == "string" and "embedding" in t.text.lower()) for t in toks)
    if q.pipeline:
        plan = _pipeline_plan(q, toks, user_params)
    elif _is_chain(q, path_functions):
        plan = _chain_plan(q, user_params)
    elif path_functions:
        name = sorted(path_functions)[0]
        raise BadRequest(f"function {name}() is not supported here: it needs a relationship pattern")
    else:
        _check_names(q)
        plan = _node_plan(q, user_params) if q.rel is None else _rel_plan(q, user_params)
    return replace(plan, embeddings=embeddings)


def _is_chain(q: _Query, path_functions: set[str]) -> bool:
    """Whether the pattern needs a chain plan: more than one relationship, a variable-length one, a
    path variable, relationship tables to infer, a cycle (a node variable twice), or path functions.
    The single-relationship plans answer the rest with fewer rounds."""
    if q.more or q.clauses:
        return True
    if not q.rels:
        return False
    keys = [n.key for n in q.nodes]
    return (len(q.rels) > 1 or q.path is not None or bool(path_functions) or len(set(keys)) != len(keys)
            or any(r.hops is not None or len(r.tables) != 1 for r in q.rels))


# ---------------------------------------------------------------------------------------------------
# Chains: multi-hop patterns, gathered hop by hop and finished on the sub-graph (cypher/chain.py)


def _chain_plan(q: _Query, params: dict[str, Any]) -> Plan:
    _check_chain_names(q)
    node_labels, rel_tables = _infer_chain_tables(q.paths)
    pushed = _single_variable_conjuncts(q)
    conjuncts = _conjuncts(q.where)
    walked = {n.key for p in q.paths if p.rels for n in p.nodes}
    for p in q.paths:
        if not p.rels and p.nodes[0].key not in walked:
            raise BadRequest("several patterns in one MATCH need each a relationship, or a node variable of"
                             f" another pattern: ({p.nodes[0].var}) alone would pair every node with every"
                             " binding of the rest")
    chains = [_one_chain(p, node_labels, rel_tables[k], pushed, conjuncts, params)
              for k, p in enumerate(q.paths) if p.rels]
    body = render(q.clauses) if q.clauses else f"MATCH {render(q.pattern)}{_where(q.where, [])}"
    # No LIMIT on the sub-graph: the merge orders, breaks ties over all columns, then slices.
    query, merge = _finish(replace(q, skip=0, limit=None), body, [])
    merge = replace(merge, skip=q.skip, limit=q.limit)
    columns = _chain_columns(q, node_labels, [t for ts in rel_tables for t in ts])
    chain = replace(chains[0], columns=columns, also=tuple(chains[1:]))
    return Plan("chain", query, params, merge, chain=chain)


def _one_chain(p: _Path, node_labels: dict[str, tuple[str, ...]], rel_tables: Sequence[tuple[str, ...]],
               pushed: dict[str, list[str]], conjuncts: list[tuple[Tok, ...]], params: dict[str, Any], *,
               keys: dict[str, str] | None = None, reverse: bool | None = None,
               start_from: str | None = None) -> ChainPlan:
    """The walk of one pattern: from its more selective end, or (`reverse` given) from the end it says;
    `start_from`: from the nodes an earlier clause reached at that variable."""
    keys = keys or {}
    nodes = [ChainNode(n.var, node_labels[n.key], render(n.props), tuple(pushed.get(n.key, ())),
                       keys.get(n.key, n.key)) for n in p.nodes]
    hops = [ChainHop(r.var, rel_tables[i], r.direction, *(r.hops or (1, 1)), r.hops is not None,
                     render(r.props), tuple(pushed.get(r.key, ()) if r.hops is None else ()))
            for i, r in enumerate(p.rels)]
    ends = [_start_ids(p.nodes[k], node_labels[p.nodes[k].key], conjuncts, params) for k in (0, -1)]
    first, last = (_selectivity(nodes[k], ends[j]) for j, k in ((0, 0), (1, -1)))
    start_ids = ends[0]
    if (last > first) if reverse is None else reverse:  # walk from the more selective end
        flip: dict[str, Literal["->", "<-", "-"]] = {"->": "<-", "<-": "->", "-": "-"}
        nodes.reverse()
        hops = [replace(h, direction=flip[h.direction]) for h in reversed(hops)]
        start_ids = ends[1]
    return ChainPlan(tuple(nodes), tuple(hops), {}, start_ids, start_from=start_from)


def _check_chain_names(q: _Query) -> None:
    nodes = {n.key for p in q.paths for n in p.nodes}
    rels = [r.key for p in q.paths for r in p.rels]
    paths = [p.path.key for p in q.paths if p.path is not None]
    if len(set(rels)) != len(rels) or nodes & set(rels):
        raise BadRequest("a relationship variable appears twice in the pattern, or also names a node")
    if len(set(paths)) != len(paths) or set(paths) & (nodes | set(rels)):
        raise BadRequest("a path variable appears twice, or also names a node or relationship")
    names = nodes | set(rels) | set(paths)
    for item in q.items:
        if item.alias is not None and item.alias.key in names:
            raise BadRequest(f"alias {item.alias.text} hides the pattern variable of the same name")


def _infer_chain_tables(paths: tuple[_Path, ...], seed: dict[str, tuple[str, ...]] | None = None,
                        ) -> tuple[dict[str, tuple[str, ...]], list[list[tuple[str, ...]]]]:
    """Each node variable's possible tables and each hop's (per pattern), narrowed from the schema to
    a fixpoint over all the MATCH's patterns (`seed`: tables of variables bound before)."""
    all_nodes = tuple(_NODE_TABLES.values())
    labels: dict[str, set[str]] = {}
    for n in (n for p in paths for n in p.nodes):
        start = set(seed[n.key]) if seed and n.key in seed else set(all_nodes)
        labels[n.key] = labels.get(n.key, start) & ({n.table} if n.table else set(all_nodes))
    tables = [[set(r.tables or _REL) for r in p.rels] for p in paths]
    changed = True
    while changed:
        changed = False
        for k, p in enumerate(paths):
            for i, r in enumerate(p.rels):
                changed |= _narrow(r, tables[k], i, labels, p.nodes[i].key, p.nodes[i + 1].key)
    order = {t: k for k, t in enumerate(all_nodes)}
    return ({k: tuple(sorted(v, key=order.__getitem__)) for k, v in labels.items()},
            [[tuple(t for t in _REL if t in ts) for ts in per] for per in tables])


def _narrow(r: _Rel, tables: list[set[str]], i: int, labels: dict[str, set[str]], left: str, right: str) -> bool:
    """Narrow hop i's tables and its ends' labels to what the schema allows; whether anything changed."""
    a, b = labels[left], labels[right]
    fw, bw = r.direction in ("->", "-"), r.direction in ("<-", "-")
    ok: set[str] = set()
    na: set[str] = set()
    nb: set[str] = set()
    for t in tables[i]:
        src, dst = _REL[t].source.name, _REL[t].target.name
        # A variable-length hop may pass any node between its ends: only its ends are checked.
        for near, far, way in ((src, dst, fw), (dst, src, bw)):
            if way and near in a and (far in b or r.hops is not None):
                ok.add(t)
                na.add(near)
                nb.add(far)
    if r.hops is not None:
        nb = {x for t in ok for x in (_REL[t].source.name, _REL[t].target.name)} & b
    changed = (ok, na & a, nb & b) != (tables[i], a, b)
    tables[i], labels[left], labels[right] = ok, na & a, nb & b
    if not ok or not labels[left] or not labels[right]:
        raise BadRequest(f"no relationship table fits hop {i + 1} of the pattern with these labels"
                         f" and directions ({_ASYMMETRIC}; RELATES joins Entity to Entity)")
    return changed


def _conjuncts(where: tuple[Tok, ...]) -> list[tuple[Tok, ...]]:
    if not where:
        return []
    if any(depth == 0 and t.is_word("or", "xor") for _i, t, depth in _walk(where)):
        return [where]
    return [c for c in _split(where, _is_and) if c]


def _single_variable_conjuncts(q: _Query) -> dict[str, list[str]]:
    """WHERE conjuncts that read one pattern variable and nothing else (no other name that could be a
    variable): true of every binding, so they may prune the walk where that variable is bound."""
    out: dict[str, list[str]] = {}
    for c in _conjuncts(q.where):
        names = {var for _i, var, _prop in _refs(c)}
        if len(names) == 1:
            out.setdefault(names.pop(), []).append(render(c))
    return out


def _selectivity(node: ChainNode, ids: tuple[str, ...] | None) -> int:
    if len(node.labels) != 1:
        return 0
    if ids is not None:
        return 2
    return 1 if node.inline or node.filters else 0


def _start_ids(node: _Node, labels: tuple[str, ...], conjuncts: list[tuple[Tok, ...]],
               params: dict[str, Any]) -> tuple[str, ...] | None:
    """The ids an end node is pinned to (`{id: 'x'}`, `{id: $p}`, `WHERE n.id = ...` or `n.id IN
    [...]` / `IN $list`) when its table is placed by id: only their shards need be asked first."""
    if labels != (node.table,) or OWNER_KEY.get(node.table) != "id":
        return None
    candidates: list[tuple[str, tuple[Tok, ...]]] = []  # ("=" or "in", the value's tokens)
    for pair in _split(node.props[1:-1], _is_comma) if node.props else []:
        if len(pair) >= 3 and pair[0].key == "id" and pair[1].is_op(":"):
            candidates.append(("=", pair[2:]))
    for c in conjuncts:
        if len(c) >= 5 and c[0].key == node.key and c[1].is_op(".") and c[2].key == "id":
            if c[3].is_op("=") or c[3].is_word("in"):
                candidates.append(("=" if c[3].is_op("=") else "in", c[4:]))
    for op, value in candidates:
        ids = None
        if op == "=" and len(value) == 1:
            ids = _string_values(value[0], params, many=False)
        elif op == "in":
            if len(value) == 1:
                ids = _string_values(value[0], params, many=True)
            elif value[0].is_op("[") and value[-1].is_op("]"):
                items = [_string_values(v[0], params, many=False) if len(v) == 1 else None
                         for v in _split(value[1:-1], _is_comma) if v]
                ids = None if any(i is None for i in items) else tuple(x for i in items if i for x in i)
        if ids is not None:
            return ids
    return None


def _string_values(t: Tok, params: dict[str, Any], many: bool) -> tuple[str, ...] | None:
    if t.kind == "param":
        value = params.get(t.text[1:])
        if many and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        return (value,) if not many and isinstance(value, str) else None
    if t.kind == "string" and not many and "\\" not in t.text:
        return (t.text[1:-1],)
    return None


def _chain_columns(q: _Query, node_labels: dict[str, tuple[str, ...]],
                   rel_tables: list[tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The columns of each node table the sub-graph needs: those the query reads, or all of them when
    it reads nodes whole (a node, a path, nodes(...)) or a name it cannot place."""
    aliases = {it.alias.key for it in q.items if it.alias is not None}
    rels = [r for p in q.paths for r in p.rels]
    expressions = [q.where, *(it.expr for it in q.items), *(k for k, _d in q.order), *(r.props for r in rels)]
    return _columns_read(expressions, rels, [n for p in q.paths for n in p.nodes], node_labels, rel_tables, aliases)


def _columns_read(expressions: Sequence[Sequence[Tok]], rels: Sequence[_Rel], nodes: Sequence[_Node],
                  node_labels: dict[str, tuple[str, ...]], rel_tables: Sequence[tuple[str, ...]],
                  aliases: set[str]) -> dict[str, tuple[str, ...]]:
    every = {x for ts in rel_tables for t in ts for x in (_REL[t].source.name, _REL[t].target.name)}
    wanted: dict[str, set[str]] = {t: {"id", OWNER_KEY[t]} for t in every}
    fixed_rels = {r.key for r in rels if r.hops is None}
    whole = any(r.extra for r in rels)
    embedding = False
    for toks in expressions:
        embedding |= any(t.key == "embedding" for t in toks if t.kind in ("word", "ident"))
        for i, var, prop in _refs(toks):
            if i >= 2 and toks[i - 1].is_op("(") and toks[i - 2].is_word("length", "cost"):
                continue  # length(p): no node is read
            if var in node_labels and prop is not None:
                for t in node_labels[var]:
                    wanted.setdefault(t, {"id", OWNER_KEY[t]}).add(prop)
            elif var not in fixed_rels and var not in aliases:
                whole = True
    for n in nodes:
        for part in _split(n.props[1:-1], _is_comma) if n.props else []:
            if part:
                for t in node_labels[n.key]:
                    wanted.setdefault(t, {"id", OWNER_KEY[t]}).add(part[0].key)
    embedding |= whole
    return {t: tuple(c for c in TABLE_COLUMNS[t] if c != "stub" and (whole or c in cols)
                     and (embedding or c != "embedding"))
            for t, cols in wanted.items()}


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


# ---------------------------------------------------------------------------------------------------
# OPTIONAL MATCH / WITH pipelines: every clause's patterns gathered, in clause order, into one
# sub-graph; the whole query then runs on it (cypher/chain.py's argument, clause by clause)


@dataclass(frozen=True, slots=True)
class _Var:
    """A name in scope at some clause of a pipeline."""

    kind: Literal["node", "rel", "path", "value"]
    key: str  # a node's identity: the variable its pattern bound (an alias `WITH a AS z` is a's)
    labels: tuple[str, ...] = ()  # node: its possible tables; rel: its tables when of fixed length
    whole: bool = False  # value: may hold whole nodes, relationships or paths (no total order)
    collected: bool = False  # value: a collect() list, whose order Kuzu does not define


def _pipeline_plan(q: _Query, toks: Sequence[Tok], params: dict[str, Any]) -> Plan:
    """Why it is exact. Rows after each clause are those of the whole graph, by induction over the
    clauses, if the sub-graph holds every binding of each MATCH / OPTIONAL MATCH pattern that is
    compatible with an incoming row and satisfies the clause's WHERE (a sub-graph of real copies holds
    no binding the whole graph lacks; OPTIONAL MATCH's null rows then agree too, since the bindings a
    row has are the same). Each pattern is walked like a chain (cypher/chain.py), pruned only by its
    own clause's single-variable WHERE conjuncts (true of every binding that counts, for OPTIONAL
    MATCH too: those failing its WHERE give the null row either way), and a variable bound by an
    earlier clause is walked from the nodes an earlier walk reached at it: a superset of the values
    it can have in any incoming row (WITH only passes values on, filters, groups or slices them).
    WITH ... SKIP/LIMIT keeps the same rows as one database would by ordering ties by every projected
    value (rows equal in all of them cannot be told apart afterwards)."""
    scope: dict[str, _Var] = {}
    bound_ever: set[str] = set()
    stages: list[tuple[ChainPlan, ...]] = []
    body: list[str] = []
    node_labels: dict[str, set[str]] = {}  # every name of a node (aliases too) -> its tables
    plain_values: set[str] = set()  # WITH's names of values that hold no whole node
    rels: list[_Rel] = []
    nodes: list[_Node] = []
    expressions: list[Sequence[Tok]] = []
    # Names whose values tell the incoming rows apart (None: rows may repeat): see _with_clause
    unique: set[str] | None = set()
    for clause in q.pipeline:
        expressions.append(clause.where)
        if clause.kind == "with":
            text, scope, unique = _with_clause(clause, scope, bound_ever, unique)
            body.append(text)
            bound_ever |= set(scope)
            for name, var in scope.items():
                if var.kind == "node":
                    node_labels.setdefault(name, set()).update(var.labels)
                elif var.kind == "value" and not var.whole:
                    plain_values.add(name)
            # A name passed on (`WITH a`, `WITH a AS z`) reads nothing of it
            expressions += [it.expr for it in clause.items if len(it.expr) > 1 or it.expr[0].kind not in (
                "word", "ident")] + [k for k, _d in clause.order]
            continue
        body.append(render(toks[clause.start:clause.end]))
        walks, new = _clause_walks(clause, scope, bound_ever, params)
        if any(p.rels for p in clause.paths):
            unique = None  # parallel relationships, paths: bindings may agree on every name
        elif unique is not None:
            unique |= set(new)
        stages.append(walks)
        for name, var in new.items():
            scope[name] = var
            bound_ever.add(name)
            if var.kind == "node":
                node_labels.setdefault(name, set()).update(var.labels)
        for p in clause.paths:
            rels += p.rels
            nodes += p.nodes
            expressions += [r.props for r in p.rels]
    items = _expand_stars(q.items, scope)
    names = {it.alias.key for it in items if it.alias is not None}
    for name in names & set(scope):
        raise BadRequest(f"alias {name} hides the variable of the same name")
    final = replace(q, items=items)
    expressions += [it.expr for it in items] + [k for k, _d in q.order]
    # No LIMIT on the sub-graph: the merge orders, breaks ties over all columns, then slices.
    query, merge = _finish(replace(final, skip=0, limit=None), " ".join(body), [])
    merge = replace(merge, skip=q.skip, limit=q.limit)
    labels = {k: tuple(t for t in _NODE_TABLES.values() if t in v) for k, v in node_labels.items()}
    # Hops may pass any table: every node table's id and owner key, the rest as read.
    columns = _columns_read(expressions, rels, nodes, labels, [tuple(_REL)], plain_values | names)
    first, *rest = stages
    chain = replace(first[0], columns=columns, also=first[1:], stages=tuple(rest))
    return Plan("chain", query, params, merge, chain=chain)


def _clause_walks(clause: _Clause, scope: dict[str, _Var], bound_ever: set[str],
                  params: dict[str, Any]) -> tuple[tuple[ChainPlan, ...], dict[str, _Var]]:
    """The walks gathering one MATCH / OPTIONAL MATCH clause's bindings, and the names it binds."""
    rel_keys = [r.key for p in clause.paths for r in p.rels]
    path_keys = [p.path.key for p in clause.paths if p.path is not None]
    node_keys = {n.key for p in clause.paths for n in p.nodes}
    if len(set(rel_keys)) != len(rel_keys) or node_keys & set(rel_keys):
        raise BadRequest("a relationship variable appears twice in the pattern, or also names a node")
    if len(set(path_keys)) != len(path_keys) or set(path_keys) & (node_keys | set(rel_keys)):
        raise BadRequest("a path variable appears twice, or also names a node or relationship")
    for name in set(rel_keys) | set(path_keys):
        if name in bound_ever:
            raise BadRequest(f"{name} is bound by an earlier clause: a relationship or path variable may appear in"
                             " one pattern only (compare properties in WHERE instead)")
    bound: dict[str, str] = {}  # node names bound before -> their identity, when walks reached them
    for name in node_keys:
        var = scope.get(name)
        if var is None and name in bound_ever:
            raise BadRequest(f"{name} was dropped by a WITH and is bound again: give the new variable another name")
        if var is not None and var.kind != "node":
            what = {"rel": "a relationship", "path": "a path"}.get(var.kind, "a value computed by WITH")
            raise BadRequest(f"{name} is {what}, not a node bound by a pattern: pass the node itself on (WITH v)")
        if var is not None and var.kind == "node":
            bound[name] = var.key
    seed = {name: scope[name].labels for name in bound}
    labels, rel_tables = _infer_chain_tables(clause.paths, seed)
    pushed = _single_variable_conjuncts(_where_only(clause.where))
    conjuncts = _conjuncts(clause.where)
    _check_connected(clause, {n for n, v in scope.items() if v.kind == "node"})
    keys = {name: bound.get(name, name) for name in node_keys}
    walked = {n.key for p in clause.paths if p.rels for n in p.nodes}
    walks: list[ChainPlan] = []
    for k, p in enumerate(clause.paths):
        if not p.rels:
            n = p.nodes[0]
            if n.key in bound or n.key in walked:
                continue
            start = _start_ids(n, labels[n.key], conjuncts, params)
            walks.append(ChainPlan((ChainNode(n.var, labels[n.key], render(n.props), tuple(pushed.get(n.key, ())),
                                              n.key),), (), {}, start))
            continue
        at = [i for i, n in enumerate(p.nodes) if n.key in bound]
        if not at:
            walks.append(_one_chain(p, labels, rel_tables[k], pushed, conjuncts, params, keys=keys))
            continue
        i = 0 if at[0] == 0 else len(p.nodes) - 1 if at[-1] == len(p.nodes) - 1 else at[0]
        start_from = bound[p.nodes[i].key]
        if i > 0:  # the part before the bound node, walked from it
            left = _Path(None, p.nodes[:i + 1], p.rels[:i])
            walks.append(_one_chain(left, labels, rel_tables[k][:i], pushed, conjuncts, params, keys=keys,
                                    reverse=True, start_from=start_from))
        if i < len(p.rels):
            right = _Path(None, p.nodes[i:], p.rels[i:])
            walks.append(_one_chain(right, labels, rel_tables[k][i:], pushed, conjuncts, params, keys=keys,
                                    reverse=False, start_from=start_from))
    new: dict[str, _Var] = {}
    for name in node_keys - set(scope):
        new[name] = _Var("node", name, labels[name])
    for k, p in enumerate(clause.paths):
        for i, r in enumerate(p.rels):
            new[r.key] = _Var("rel", r.key, rel_tables[k][i] if r.hops is None else ())
        if p.path is not None:
            new[p.path.key] = _Var("path", p.path.key)
    if not walks:  # every pattern is a node already bound: nothing more to gather
        return (), new
    return tuple(walks), new


def _where_only(where: tuple[Tok, ...]) -> _Query:
    """A query holding only `where`, for the helpers that read a query's WHERE."""
    return _Query((), (), None, (), where, False, (), (), "", 0, None)


def _check_connected(clause: _Clause, bound: set[str]) -> None:
    """Refuse a pattern that shares no node with the clause's other patterns nor with the nodes in
    scope, when there are any: a cartesian product, every binding paired with every other."""
    groups = [{n.key for n in p.nodes} for p in clause.paths]
    if bound:
        groups.append(set(bound))
    if len(groups) <= 1:
        return
    joined = groups[0]
    pending = groups[1:]
    while pending:
        touching = [g for g in pending if g & joined]
        if not touching:
            example = next(iter(pending[0] - bound), "")
            raise BadRequest(f"a pattern that shares no node variable with the others ({example}) is a cartesian"
                             " product, pairing every binding with every other: not supported; join it on a"
                             " variable")
        for g in touching:
            joined |= g
            pending.remove(g)


def _with_clause(clause: _Clause, scope: dict[str, _Var], bound_ever: set[str], unique: set[str] | None,
                 ) -> tuple[str, dict[str, _Var], set[str] | None]:
    """The WITH clause as the sub-graph's query runs it, the names in scope after it, and the names
    that tell its rows apart (`unique` is that of the incoming rows)."""
    new: dict[str, _Var] = {}
    renamed: dict[str, str] = {}  # incoming name -> its name after the WITH
    ranked: list[tuple[int, str]] = []
    for item in clause.items:
        name = item.alias.key if item.alias is not None else item.expr[0].key
        if name in new:
            raise BadRequest(f"WITH names {name} twice")
        calls = [n for _i, n in _calls(item.expr)]
        single = len(item.expr) == 1 and item.expr[0].kind in ("word", "ident")
        if single and item.expr[0].key in scope:
            var = scope[item.expr[0].key]
            renamed[item.expr[0].key] = name
        else:
            var = _Var("value", name, whole=_holds_whole(item.expr, scope), collected="collect" in calls)
        if name in bound_ever and not (single and item.expr[0].key == name):
            raise BadRequest(f"WITH ... AS {name} reuses the name of another variable: choose a new name")
        new[name] = var
        aggs = [i for i, n in _calls(item.expr) if n in KUZU_AGGREGATES]
        distinct = any(i + 2 < len(item.expr) and item.expr[i + 2].is_word("distinct") for i in aggs)
        # kuzu 0.11.3 gives NULL for a plain aggregate after a DISTINCT one when grouped: those last
        ranked.append((2 if distinct else 1 if aggs else 0, item.text))
    text = "WITH " + ("DISTINCT " if clause.distinct else "") + ", ".join(
        t for _r, t in sorted(ranked, key=lambda x: x[0]))
    grouped = clause.distinct or any(r for r, _t in ranked)
    if grouped:
        unique = set(new)  # one row per distinct projected value
    elif unique is not None:
        unique = {renamed[n] for n in unique} if unique <= set(renamed) else None
    keys = [clause.order_text] if clause.order_text else []
    if clause.skip is not None or clause.limit is not None:
        if unique is None:
            # kuzu 0.11.3 sorts rows that tie on every ORDER BY key wrongly beyond ~10,000 rows (wrong rows
            # kept, not only their order): the keys below must tell every row apart.
            raise BadRequest("WITH ... SKIP/LIMIT here needs DISTINCT or an aggregate (e.g. WITH DISTINCT ... or"
                             " count(*) AS n): its rows may repeat (bindings through relationships, or a WITH"
                             " that dropped names), and kuzu 0.11.3 orders more than a few thousand rows tied on"
                             " every key wrongly")
        keys += _tie_keys(clause, new)
    if keys:
        text += " ORDER BY " + ", ".join(keys)
    if clause.skip is not None:
        text += f" SKIP {clause.skip.text}"
    if clause.limit is not None:
        text += f" LIMIT {clause.limit.text}"
    if clause.where:
        text += f" WHERE {render(clause.where)}"
    return text, new, unique


def _tie_keys(clause: _Clause, new: dict[str, _Var]) -> list[str]:
    """ORDER BY keys after the user's that order every row apart from those equal in every projected
    value, so WITH ... SKIP/LIMIT keeps the same rows however the sub-graph was loaded."""
    out = []
    for item in clause.items:
        name = item.alias.text if item.alias is not None else item.expr[0].text
        var = new[item.alias.key if item.alias is not None else item.expr[0].key]
        if var.kind == "node":
            out.append(f"{name}.id")
            if len(var.labels) != 1:
                out.append(f"label({name})")
        elif var.kind in ("rel", "path") or var.whole or var.collected:
            what = {"rel": "a relationship", "path": "a path"}.get(var.kind, "a list or whole node")
            raise BadRequest(f"WITH ... SKIP/LIMIT with {name} ({what}) is not supported: which rows it keeps"
                             " among ties cannot be made the same on every shard count; pass ids or properties on")
        else:
            out.append(name)
    return out


def _holds_whole(expr: Sequence[Tok], scope: dict[str, _Var]) -> bool:
    """Whether a value may hold whole nodes, relationships or paths (over-approximated)."""
    for i, var, prop in _refs(expr):
        v = scope.get(var)
        if v is None or prop is not None:
            continue
        if i >= 2 and expr[i - 1].is_op("(") and expr[i - 2].is_word("count", "length"):
            continue
        if v.kind != "value" or v.whole:
            return True
    return False


def _expand_stars(items: tuple[_Item, ...], scope: dict[str, _Var]) -> tuple[_Item, ...]:
    """`v.*` in a pipeline's RETURN: the columns of v's one table, as `items` expands them."""
    out: list[_Item] = []
    for item in items:
        toks = item.expr
        if not (len(toks) == 3 and toks[1].is_op(".") and toks[2].is_op("*")):
            out.append(item)
            continue
        var = scope.get(toks[0].key)
        if var is None or var.kind not in ("node", "rel") or len(var.labels) != 1:
            raise BadRequest(f"{render(toks)} needs {toks[0].text} to be a node of one label (e.g."
                             f" ({toks[0].text}:Entity)) or a relationship of one type: the columns depend on the table")
        cols = [c for c in TABLE_COLUMNS[var.labels[0]] if c not in ("stub", "embedding")]
        first = toks[0]
        out += [_Item((replace(first, space=first.space if k == 0 else True), Tok("op", ".", -1, False),
                       Tok("word", c, -1, False)), None, None) for k, c in enumerate(cols)]
    return tuple(out)
