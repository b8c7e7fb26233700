"""Distributed execution of `torua.graph.query`: fan-out to the shards, far-end resolution, merge.

`run_query` runs on the router. The planner (`torua_node.cypher.planner`) gives one of three plans:

- "node": one node pattern. Every shard runs the query restricted to its real nodes (each real node
  lives on exactly one shard), with aggregates rewritten into mergeable partials; the merge groups,
  recombines, applies DISTINCT, ORDER BY, SKIP and LIMIT globally.
- "rel": one relationship whose far end is used only through its id. A binding (a, r, b) is stored
  on the shard where its anchor a is real (relations and mentions are copied to both ends' shards),
  so each binding is found exactly once by requiring the anchor to be real. The far end may be a
  stub there: a probe collects those ids, their owning shards say which are real, and the query then
  keeps a binding only if its far end is real locally or was confirmed.
- "far_end": the far end is needed in full. The bindings are gathered with both ends' rows (far ends
  that are stubs fetched from their owning shards, bindings to never-created ends dropped) into a
  temporary in-memory Kuzu database with the shard schema, and the query runs there: exact by
  construction, since every binding of the pattern is in that sub-graph.

Far ends are resolved with `run_on_shard` on their owners (an entity's shard is shard(id), a chunk's
is shard(document_id), which a stub keeps), so a failure there is charged to the right shard.

Rows come back in a deterministic order: ORDER BY keys compared as Kuzu compares them, then ties
broken by the binding's identity (ids) or, after DISTINCT or aggregation, by all columns in a fixed
total order. So SKIP and LIMIT never depend on the number of shards.

`execute_on_shard` is the shard side, run on a replica's Kuzu thread.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from functools import partial
from typing import Any

import kuzu
import msgspec
import numpy as np
import pyarrow as pa

from torua.errors import BadRequest, ToruaError, Unavailable
from torua.hashing import shard_for
from torua.model import ShardStatus
from torua_node.cypher.fanout import Status, gather
from torua_node.cypher.guard import check_read_only
from torua_node.cypher.planner import (
    OWNER_KEY,
    REAL_IDS_PARAM,
    AggSpec,
    FarEnd,
    MergeSpec,
    Plan,
    plan_query,
    resolve_query,
)
from torua_node.storage.schema import init_schema
from torua_node.storage.store import TRANSIENT_ERRORS

__all__ = [
    "ShardRows",
    "QueryResult",
    "RunOnShard",
    "run_query",
    "execute_on_shard",
    "merge_rows",
    "to_json_value",
    "MAX_GATHERED_BINDINGS",
]


class ShardRows(msgspec.Struct):
    """One shard's answer: Kuzu's column names and types, and JSON-able rows."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


class QueryResult(msgspec.Struct):
    columns: list[str]
    rows: list[list[Any]]
    partial: bool
    shards: dict[str, ShardStatus]


RunOnShard = Callable[[int, str, dict[str, Any]], Awaitable[ShardRows]]

MAX_GATHERED_BINDINGS = 1_000_000
_MIB = 1024 * 1024
_MAX_ERROR_LEN = 1000
_ORDERABLE = frozenset({"BOOL", "INT8", "INT16", "INT32", "INT64", "INT128", "UINT8", "UINT16", "UINT32",
                        "UINT64", "SERIAL", "FLOAT", "DOUBLE", "STRING", "DATE", "TIMESTAMP"})


# ---------------------------------------------------------------------------------------------------
# Shard side


def execute_on_shard(conn: kuzu.Connection, query: str, params: dict[str, Any]) -> ShardRows:
    """Run a planned query on one shard replica, in a read-only transaction (a second guard behind
    the planner's check). Kuzu's errors become BadRequest (the user's query) or Unavailable."""
    toks = check_read_only(query, params)
    used = {t.text[1:] for t in toks if t.kind == "param"}
    return _read_only(conn, lambda: _to_rows(conn.execute(query, {k: v for k, v in params.items() if k in used})))


def _read_only(conn: kuzu.Connection, fn: Callable[[], ShardRows]) -> ShardRows:
    conn.execute("BEGIN TRANSACTION READ ONLY")
    try:
        out = fn()
        conn.execute("COMMIT")
        return out
    except RuntimeError as exc:
        _rollback(conn)
        raise _kuzu_error(exc) from None
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: kuzu.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except RuntimeError:
        pass  # Kuzu already ended the transaction when the statement failed


def _kuzu_error(exc: RuntimeError) -> ToruaError:
    text = str(exc)[:_MAX_ERROR_LEN]
    if text.startswith(TRANSIENT_ERRORS):  # the shard is unwell, not the query
        return Unavailable(f"the shard could not run the query: {text}")
    return BadRequest(f"query failed: {text}")


def _to_rows(result: kuzu.QueryResult | list[kuzu.QueryResult]) -> ShardRows:
    if isinstance(result, list):  # several statements: refused before, never expected here
        raise BadRequest("multiple statements are not allowed")
    types = [str(t) for t in result.get_column_data_types()]
    for t in types:
        if "INTERNAL_ID" in t or t.startswith(("REL", "RECURSIVE_REL")):
            raise BadRequest(f"values of type {t} cannot be returned: they are shard-local")
    rows = [[to_json_value(v) for v in row] for row in result.get_all()]
    return ShardRows(columns=list(result.get_column_names()), types=types, rows=rows)


def to_json_value(v: Any) -> Any:
    """A Kuzu value as JSON-able Python, deterministically. Nodes lose their shard-local `_id` and the
    storage-only `stub` flag; INT128 sums arrive as Decimal and become ints."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (list, tuple)):
        return [to_json_value(x) for x in v]
    if isinstance(v, dict):
        if "_id" in v and "_label" in v:
            if "_src" in v or "_dst" in v:
                raise BadRequest("whole relationships cannot be returned: return their properties")
            return {k: to_json_value(x) for k, x in v.items() if k not in ("_id", "stub")}
        return {str(k): to_json_value(x) for k, x in v.items()}
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    return str(v)


# ---------------------------------------------------------------------------------------------------
# Router side


class _Run:
    """One query's fan-out state: which shards are still answering, and their status."""

    def __init__(self, num_shards: int, run_on_shard: RunOnShard) -> None:
        self.num_shards = num_shards
        self.run_on_shard = run_on_shard
        self.status: Status = {str(s): ShardStatus(ok=True) for s in range(num_shards)}

    async def fan_out(
        self, query_for: Callable[[int], tuple[str, dict[str, Any]]], shards: Iterable[int] | None = None
    ) -> dict[int, ShardRows]:
        """Ask the live shards (all, or those given) concurrently, under the one fan-out policy
        (`cypher/fanout.py`): a shard that cannot answer is marked and not asked again, never skipped
        silently; the user's mistakes (4xx) are raised: they are the same on every shard."""
        wanted = range(self.num_shards) if shards is None else sorted(set(shards))
        asks = {s: query_for(s) for s in wanted if self.status[str(s)].ok}
        return await gather({s: partial(self.run_on_shard, s, q, p) for s, (q, p) in asks.items()}, self.status)

    async def resolve(self, table: str, owners: dict[str, Any], columns: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """The real nodes among `owners` (id -> owner key), by id, asked of their owning shards. An id
        whose owner does not answer stays unresolved: its bindings are left out and that shard is
        marked failed, so the answer is partial, never wrong."""
        by_shard: dict[int, list[str]] = {}
        for i, owner in owners.items():
            if owner is not None:
                by_shard.setdefault(shard_for(str(owner), self.num_shards), []).append(i)
        cols = ("id", *(c for c in columns if c not in ("id", "stub")))
        parts = await self.fan_out(lambda s: resolve_query(table, cols, sorted(by_shard[s])), by_shard)
        return {row[0]: dict(zip(cols, row)) for p in parts.values() for row in p.rows}


async def run_query(
    cypher: str,
    params: dict[str, Any] | None,
    num_shards: int,
    run_on_shard: RunOnShard,
) -> QueryResult:
    """Plan `cypher`, run it on every shard and merge: the answer one database holding all the data
    would give, or BadRequest for what is refused. Shards that do not answer make it partial.
    Far ends of relationships are fetched with `run_on_shard` from their owning shards."""
    if num_shards < 1:
        raise ValueError("num_shards must be >= 1")
    plan = plan_query(cypher, dict(params or {}))
    run = _Run(num_shards, run_on_shard)
    if plan.kind == "node":
        parts = await run.fan_out(lambda _s: (plan.query, plan.params))
    elif plan.kind == "rel":
        parts = await _run_rel(plan, run)
    else:
        parts = await _run_far_end(plan, run)
    ordered = [_permute(plan.merge, parts[s]) for s in sorted(parts)]
    rows = merge_rows(plan.merge, ordered)
    columns = ordered[0].columns[:plan.merge.width] if ordered else list(plan.merge.names)
    partial = not all(st.ok for st in run.status.values())
    return QueryResult(columns=columns, rows=rows, partial=partial, shards=run.status)


async def _run_rel(plan: Plan, run: _Run) -> dict[int, ShardRows]:
    assert plan.probe is not None and plan.far_table is not None
    probe = plan.probe
    stubs = await run.fan_out(lambda _s: (probe, plan.params))
    owners = {row[0]: row[1] for p in stubs.values() for row in p.rows}
    real = await run.resolve(plan.far_table, owners, ("id",))
    confirmed = {s: sorted(row[0] for row in p.rows if row[0] in real) for s, p in stubs.items()}
    return await run.fan_out(lambda s: (plan.query, {**plan.params, REAL_IDS_PARAM: confirmed.get(s, [])}),
                             stubs)


async def _run_far_end(plan: Plan, run: _Run) -> dict[int, ShardRows]:
    far = plan.far_end
    assert far is not None
    parts = await run.fan_out(lambda _s: (far.gather, plan.params))
    if not parts:
        return {}
    gathered = _Gathered(far, list(parts.values()))
    gathered.found = await run.resolve(far.far_table, gathered.stub_owners(), far.far_cols)
    params = {**plan.params, REAL_IDS_PARAM: []}
    return {0: await asyncio.to_thread(gathered.run, plan.query, params)}


# ---------------------------------------------------------------------------------------------------
# The gathered sub-graph of a far-end plan


class _Gathered:
    """Bindings gathered from the shards, reduced to the real nodes and the relationships between
    them, loadable into a temporary database with the shard schema."""

    def __init__(self, far: FarEnd, parts: list[ShardRows]) -> None:
        self.far = far
        self.rows = [row for p in parts for row in p.rows]
        if len(self.rows) > MAX_GATHERED_BINDINGS:
            raise BadRequest(f"the pattern matches more than {MAX_GATHERED_BINDINGS} relationships whose far"
                             " ends must be fetched; narrow it down with WHERE on the other end")
        self.dim = _dim(parts[0]) if parts else 1
        na, nr = len(far.anchor_cols), len(far.rel_cols)
        self._far_at = na + nr
        self.found: dict[str, dict[str, Any]] = {}

    def far_row(self, row: list[Any]) -> dict[str, Any]:
        return dict(zip(self.far.far_cols, row[self._far_at:self._far_at + len(self.far.far_cols)]))

    def stub_owners(self) -> dict[str, Any]:
        """Far ends that are stubs where their binding is stored: id -> owner key."""
        key = OWNER_KEY[self.far.far_table]
        return {f["id"]: f[key] for f in map(self.far_row, self.rows) if f["stub"]}

    def tables(self) -> tuple[dict[str, dict[str, dict[str, Any]]], list[dict[str, Any]]]:
        """Node rows per table (by id) and the distinct relationships between real nodes."""
        far = self.far
        nodes: dict[str, dict[str, dict[str, Any]]] = {far.anchor_table: {}, far.far_table: {}}
        edges: dict[tuple[Any, ...], dict[str, Any]] = {}
        na, nr = len(far.anchor_cols), len(far.rel_cols)
        for row in self.rows:
            stored = self.far_row(row)
            other = self.found.get(stored["id"]) if stored["stub"] else stored
            if other is None:
                continue  # the far end was never created as a real node: no binding
            anchor = dict(zip(far.anchor_cols, row[:na]))
            nodes[far.anchor_table].setdefault(anchor["id"], anchor)
            nodes[far.far_table].setdefault(other["id"], other)
            src, dst = (anchor["id"], other["id"]) if row[-1] else (other["id"], anchor["id"])
            rel = dict(zip(far.rel_cols, row[na:na + nr]), **{"from": src, "to": dst})
            edges.setdefault((src, rel.get("type"), dst), rel)
        return nodes, list(edges.values())

    def run(self, query: str, params: dict[str, Any]) -> ShardRows:
        nodes, edges = self.tables()
        size = sum(len(str(r)) for t in nodes.values() for r in t.values()) + 200 * len(edges)
        pool = min(max(256 * _MIB, 16 * size), 8192 * _MIB)
        db = kuzu.Database(":memory:", buffer_pool_size=pool, max_db_size=1 << 34, max_num_threads=1)
        conn = kuzu.Connection(db)
        try:
            init_schema(conn, self.dim)
            for table, rows in nodes.items():
                _copy(conn, table, list(rows.values()), ())
            _copy(conn, self.far.rel_table, edges, ("from", "to"))
            return execute_on_shard(conn, query, params)
        finally:
            conn.close()
            db.close()


def _dim(part: ShardRows) -> int:
    """The embedding dimension when the schema stores FLOAT[dim] (any value does for BLOB)."""
    for name, t in zip(part.columns, part.types):
        if name.endswith(".embedding") and t.startswith("FLOAT[") and t.endswith("]"):
            return int(t[6:-1])
    return 1


def _copy(conn: kuzu.Connection, table: str, rows: list[dict[str, Any]], ends: tuple[str, ...]) -> None:
    """Bulk-load JSON-shaped rows, converting each column to the type the table declares."""
    if not rows:
        return
    info = conn.execute(f"CALL table_info('{table}') RETURN *")
    assert not isinstance(info, list)  # one statement, one result
    declared = [(r[1], str(r[2])) for r in info.get_all() if isinstance(r, list)]  # rows are lists
    cols = {c: pa.array([r[c] for r in rows], pa.string()) for c in ends}
    for name, kuzu_type in declared:
        values = [False if name == "stub" else r.get(name) for r in rows]
        cols[name] = _arrow_column(values, kuzu_type)
    conn.execute(f"COPY {table} FROM $t", {"t": pa.table(cols)})


def _arrow_column(values: list[Any], kuzu_type: str) -> pa.Array:
    """JSON values (as `to_json_value` made them) back into a column of a Kuzu type."""
    if kuzu_type == "BLOB":
        return pa.array([None if v is None else base64.b64decode(v) for v in values], pa.binary())
    if kuzu_type.startswith("FLOAT[") and kuzu_type.endswith("]"):
        dim = int(kuzu_type[6:-1])
        flat = np.zeros(len(values) * dim, np.float32)
        mask = np.array([v is None or len(v) != dim for v in values], bool)
        for i, v in enumerate(values):
            if not mask[i]:
                flat[i * dim:(i + 1) * dim] = v
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim, mask=pa.array(mask))
    simple = {"STRING": pa.string(), "INT64": pa.int64(), "DOUBLE": pa.float64(), "BOOL": pa.bool_(),
              "BOOLEAN": pa.bool_(), "STRING[]": pa.list_(pa.string())}
    if kuzu_type not in simple:
        raise TypeError(f"cannot load a {kuzu_type} column into the temporary database")
    return pa.array(values, simple[kuzu_type])


# ---------------------------------------------------------------------------------------------------
# Merge


def _permute(spec: MergeSpec, part: ShardRows) -> ShardRows:
    """Shard columns into the merge's order (items as written, then hidden partials)."""
    if not spec.perm:
        return part
    p = spec.perm
    return ShardRows(columns=[part.columns[i] for i in p], types=[part.types[i] for i in p],
                     rows=[[row[i] for i in p] for row in part.rows])


def merge_rows(spec: MergeSpec, parts: list[ShardRows]) -> list[list[Any]]:
    """Combine shard answers (in shard order, columns in the merge's order) into the answer one
    database would give."""
    types = parts[0].types if parts else []
    rows = [list(r) for p in parts for r in p.rows]
    if spec.aggs:
        rows = _aggregate(spec, rows, types)
    if spec.distinct:
        rows = list({_canon_row(r[:spec.width]): r for r in reversed(rows)}.values())
    for col, _desc in spec.order:
        _check_orderable(types, col, "ORDER BY")
    rows.sort(key=lambda r: tuple(_canon(r[i]) for i in (spec.tiebreak or range(spec.width))))
    for col, desc in reversed(spec.order):
        rows.sort(key=partial(_order_key_at, col), reverse=desc)  # stable, also reversed
    end = None if spec.limit is None else spec.skip + spec.limit
    return [r[:spec.width] for r in rows[spec.skip:end]]


def _aggregate(spec: MergeSpec, rows: list[list[Any]], types: list[str]) -> list[list[Any]]:
    agg_at = {a.column: a for a in spec.aggs}
    keys = [i for i in range(spec.width) if i not in agg_at]
    for a in spec.aggs:
        if a.kind in ("min", "max"):
            _check_orderable(types, a.column, a.kind)
    groups: dict[tuple[Any, ...], tuple[list[Any], list[list[tuple[Any, ...]]]]] = {}
    for row in rows:
        k = tuple(_canon(row[i]) for i in keys)
        if k not in groups:
            groups[k] = (row, [[] for _ in spec.aggs])
        for pos, a in enumerate(spec.aggs):
            groups[k][1][pos].append(tuple(row[j] for j in a.partials))
    out = []
    for first, partials in groups.values():
        row = [first[i] for i in range(spec.width)]
        for a, ps in zip(spec.aggs, partials):
            row[a.column] = _combine(a, ps)
        out.append(row)
    return out


def _combine(a: AggSpec, partials: list[tuple[Any, ...]]) -> Any:
    if a.distinct and a.kind in ("count", "sum", "avg", "collect"):
        return _over_distinct(a, partials)
    firsts = [p[0] for p in partials if p[0] is not None]
    if a.kind == "count":
        return sum(firsts)
    if a.kind == "sum":
        return _sum(firsts) if firsts else None
    if a.kind == "min":
        return min(firsts, key=_order_key) if firsts else None
    if a.kind == "max":
        return max(firsts, key=_order_key) if firsts else None
    if a.kind == "avg":
        count = sum(p[1] for p in partials)
        return _sum(firsts) / count if count else None
    # collect: Kuzu's order of a collected list is unspecified, so lists come back sorted
    return sorted((x for lst in firsts for x in lst), key=_canon) if firsts else None


def _over_distinct(a: AggSpec, partials: list[tuple[Any, ...]]) -> Any:
    values = {_canon(x): x for p in partials if p[0] is not None for x in p[0]}
    ordered = [values[k] for k in sorted(values)]
    if a.kind == "count":
        return len(ordered)
    if not ordered:
        return None
    if a.kind == "sum":
        return _sum(ordered)
    if a.kind == "avg":
        return _sum(ordered) / len(ordered)
    return ordered  # collect(DISTINCT ...)


def _sum(values: list[Any]) -> Any:
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    return math.fsum(values)  # correctly rounded: independent of the order partials arrive in


def _check_orderable(types: list[str], col: int, what: str) -> None:
    if col >= len(types):
        return
    t = types[col]
    if t not in _ORDERABLE and not t.startswith("DECIMAL"):
        raise BadRequest(f"{what} on values of type {t} is not supported across shards")


def _order_key(v: Any) -> tuple[Any, ...]:
    """Kuzu's order: NULL after every value ascending (so first descending)."""
    if v is None:
        return (1,)
    if isinstance(v, float) and math.isnan(v):
        raise BadRequest("cannot order NaN values: Kuzu's order for them is not defined")
    return (0, v)


def _order_key_at(col: int, row: list[Any]) -> tuple[Any, ...]:
    return _order_key(row[col])


def _canon(v: Any) -> tuple[Any, ...]:
    """A total order over JSON-able values of any type (for ties, DISTINCT and grouping)."""
    if v is None:
        return (0,)
    if isinstance(v, bool):
        return (1, v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            return (2, 1, 0, 0.0)
        return (2, 0, v, math.copysign(1.0, v) if isinstance(v, float) else 1.0)
    if isinstance(v, str):
        return (3, v)
    if isinstance(v, list):
        return (4, tuple(_canon(x) for x in v))
    if isinstance(v, dict):
        return (5, tuple((str(k), _canon(x)) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))))
    return (6, repr(v))


def _canon_row(row: list[Any]) -> tuple[Any, ...]:
    return tuple(_canon(v) for v in row)
