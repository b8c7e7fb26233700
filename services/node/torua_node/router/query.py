"""Distributed execution of `torua.graph.query` on the router: fan-out, far-end resolution, merge.

The planner (`torua_node.cypher.planner`) gives one of three plans:

- "node": one node pattern. Every shard runs the query restricted to its real nodes (each real node
  lives on exactly one shard), with aggregates rewritten into mergeable partials; the merge groups,
  recombines, applies DISTINCT, ORDER BY, SKIP and LIMIT globally (`torua_node.cypher.merge`).
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
is shard(document_id), which a stub keeps), so a failure there is charged to the right shard. Every
round goes through the one fan-out policy (`torua_node.router.fanout`).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from torua.errors import BadRequest
from torua.hashing import shard_for
from torua.model import ShardStatus
from torua_node.cypher.merge import ShardRows, merge_rows, permute
from torua_node.cypher.planner import OWNER_KEY, REAL_IDS_PARAM, FarEnd, Plan, plan_query, resolve_query
from torua_node.router.fanout import Status, gather
from torua_node.shard.query import execute_on_shard
from torua_node.storage.schema import init_schema
from torua_node.storage.store import Conn, all_rows, memory_database

__all__ = ["QueryResult", "RunOnShard", "run_query", "MAX_GATHERED_BINDINGS"]


class QueryResult(msgspec.Struct):
    columns: list[str]
    rows: list[list[Any]]
    partial: bool
    shards: dict[str, ShardStatus]


RunOnShard = Callable[[int, str, dict[str, Any]], Awaitable[ShardRows]]

MAX_GATHERED_BINDINGS = 1_000_000
_MIB = 1024 * 1024


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
        (`router/fanout.py`): a shard that cannot answer is marked and not asked again, never skipped
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
    ordered = [permute(plan.merge, parts[s]) for s in sorted(parts)]
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
        with memory_database(pool) as conn:
            init_schema(conn, self.dim)
            for table, rows in nodes.items():
                _copy(conn, table, list(rows.values()), ())
            _copy(conn, self.far.rel_table, edges, ("from", "to"))
            return execute_on_shard(conn, query, params)


def _dim(part: ShardRows) -> int:
    """The embedding dimension when the schema stores FLOAT[dim] (any value does for BLOB)."""
    for name, t in zip(part.columns, part.types):
        if name.endswith(".embedding") and t.startswith("FLOAT[") and t.endswith("]"):
            return int(t[6:-1])
    return 1


def _copy(conn: Conn, table: str, rows: list[dict[str, Any]], ends: tuple[str, ...]) -> None:
    """Bulk-load JSON-shaped rows, converting each column to the type the table declares."""
    if not rows:
        return
    declared = [(r[1], str(r[2])) for r in all_rows(conn, f"CALL table_info('{table}') RETURN *")]
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

