"""Distributed execution of `torua.graph.query` on the router: fan-out, far-end resolution, merge.

The planner (`torua_node.cypher.planner`) gives one of four plans:

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
- "chain": a multi-hop pattern (several, variable-length or untyped relationships, a path, a cycle),
  or an OPTIONAL MATCH / WITH pipeline: its sub-graph gathered hop by hop in frontier exchanges
  (a pipeline's clauses one after another), then queried the same way
  (`torua_node.router.traverse`, `torua_node.cypher.chain`).

Far ends are resolved with `run_on_shard` on their owners (an entity's shard is shard(id), a chunk's
is shard(document_id), which a stub keeps), so a failure there is charged to the right shard. Every
round goes through the one fan-out policy (`torua_node.router.fanout`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from torua.endpoints import encode
from torua.errors import BadRequest, Overloaded, QueryTimeout, ResourceLimit
from torua.hashing import shard_for
from torua.model import QueryReply, QueryRequest, ShardStatus
from torua.natsserver import MAX_PAYLOAD
from torua.tasks import retrieved
from torua_node.cypher.guard import check_value_sizes
from torua_node.cypher.lexer import tokenize
from torua_node.cypher.merge import ShardRows, merge_rows, permute
from torua_node.cypher.planner import OWNER_KEY, REAL_IDS_PARAM, FarEnd, Plan, plan_query, resolve_query
from torua_node.router.client import ShardClient, token
from torua_node.router.fanout import Status, gather
from torua_node.router.traverse import run_chain
from torua_node.settings import QueryLimits
from torua_node.shard.protocol import QUERY, ShardQuery
from torua_node.shard.query import execute_on_shard
from torua_node.storage.schema import init_schema
from torua_node.storage.store import Conn, all_rows, memory_database

__all__ = ["QueryResult", "RunOnShard", "run_query", "MAX_GATHERED_BINDINGS", "Queries", "QueryGate",
           "MAX_REPLY_BYTES", "SHARD_MARGIN_S"]


class QueryResult(msgspec.Struct):
    columns: list[str]
    rows: list[list[Any]]
    partial: bool
    shards: dict[str, ShardStatus]


RunOnShard = Callable[[int, str, dict[str, Any]], Awaitable[ShardRows]]

MAX_GATHERED_BINDINGS = 1_000_000
_MIB = 1024 * 1024
# What a reply may take of NATS's max_payload (headers and framing need the rest).
MAX_REPLY_BYTES = MAX_PAYLOAD - 64 * 1024
# How much longer than the query's own limit the router waits for a shard: each shard answers 408
# itself at the deadline (its worker killed a moment later if it does not stop).
SHARD_MARGIN_S = 2.0


class QueryGate:
    """Bounded concurrency of `torua.graph.query` on one router: `concurrency` run at once, `queue`
    more wait; beyond that a request is answered 503 (Overloaded, with `retry_after_ms`) at once."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._inside = 0
        self.limit = concurrency + queue
        self.concurrency = concurrency

    @contextlib.asynccontextmanager
    async def enter(self, wait_s: float) -> AsyncIterator[None]:
        if self._inside >= self.limit:
            retry_ms = 100 * max(1, self._inside // max(self.concurrency, 1))
            raise Overloaded(
                f"this node is running or queueing {self._inside} queries (limit {self.limit}: "
                f"TORUA_QUERY_CONCURRENCY + TORUA_QUERY_QUEUE); retry after {retry_ms} ms", retry_after_ms=retry_ms)
        self._inside += 1
        try:
            try:
                await asyncio.wait_for(self._slots.acquire(), max(wait_s, 0.001))
            except TimeoutError:
                raise QueryTimeout(f"the query waited its whole time limit ({wait_s:g}s) for a free slot on this "
                                   "node (TORUA_QUERY_TIMEOUT, TORUA_QUERY_CONCURRENCY)", timeout_s=wait_s) from None
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._inside -= 1


class Queries:
    """`torua.graph.query` on a router: the guardrails around `run_query` (docs/queries.md, "Limits").
    The time limit is TORUA_QUERY_TIMEOUT, lowered by the request's `timeout_ms`, for the whole
    request; every shard gets what is left of it and enforces it itself (408)."""

    def __init__(self, client: ShardClient, limits: QueryLimits | None = None) -> None:
        self.client = client
        self.limits = limits or QueryLimits()
        self.gate = QueryGate(self.limits.concurrency, self.limits.queue)

    async def answer(self, req: QueryRequest) -> QueryReply:
        limits = self.limits
        timeout_s = limits.timeout_s if req.timeout_ms is None else min(limits.timeout_s, req.timeout_ms / 1000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        seen: dict[int, int] = {}
        overloaded: list[Overloaded] = []
        refused: asyncio.Future[None] = loop.create_future()  # a shard's queue was full

        def timed_out() -> QueryTimeout:
            return QueryTimeout(f"the query ran past its time limit of {timeout_s:g}s and was cancelled on every "
                                "shard (TORUA_QUERY_TIMEOUT, or the request's timeout_ms)", timeout_s=timeout_s)

        async def run_on_shard(shard: int, query: str, params: dict[str, Any]) -> ShardRows:
            left = deadline - loop.time()
            if left <= 0:
                raise timed_out()
            ask = ShardQuery(query=query, params=params, after=token(req.after, shard), consistency=req.consistency,
                             timeout_ms=max(1, int(left * 1000)))
            try:
                reply = await self.client.call(shard, QUERY, ask, timeout=left + SHARD_MARGIN_S)
            except Overloaded as exc:
                overloaded.append(exc)
                if not refused.done():
                    refused.set_result(None)
                raise
            seen[shard] = min(seen.get(shard, reply.applied_seq), reply.applied_seq)
            return reply.result

        async with self.gate.enter(deadline - loop.time()):
            run = asyncio.ensure_future(asyncio.wait_for(
                run_query(req.cypher, req.params, self.client.num_shards, run_on_shard, limits=limits,
                          timeout_s=max(deadline - loop.time(), 0.001)),
                max(deadline - loop.time(), 0.001) + SHARD_MARGIN_S,
            ))
            run.add_done_callback(retrieved)  # refused meanwhile: its outcome is nobody's
            try:
                await asyncio.wait((run, refused), return_when=asyncio.FIRST_COMPLETED)
            finally:
                # A shard refused (or this request was cancelled): the others' answers are not
                # waited for; each shard stops its own part at the deadline it was given.
                run.cancel()
        if overloaded:
            # A shard's queue was full: the caller should back off at once, not wait for the other
            # shards' answers to read a partial one (or a 408 when those take the whole time limit).
            wait = max(e.retry_after_ms or 0 for e in overloaded)
            raise Overloaded(f"{overloaded[0].description} (and {len(overloaded) - 1} more shards)"
                             if len(overloaded) > 1 else overloaded[0].description, retry_after_ms=wait)
        try:
            result = run.result()
        except (TimeoutError, QueryTimeout):
            # A shard's 408 names what was left of the time when it was asked: name the limit.
            raise timed_out() from None
        for s, st in result.shards.items():
            if st.ok and int(s) in seen:
                st.applied_seq = seen[int(s)]
        return QueryReply(columns=result.columns, rows=result.rows, partial=result.partial, shards=result.shards)


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
    *,
    limits: QueryLimits | None = None,
    timeout_s: float | None = None,
) -> QueryResult:
    """Plan `cypher`, run it on every shard and merge: the answer one database holding all the data
    would give, or BadRequest for what is refused. Shards that do not answer make it partial.
    Far ends of relationships are fetched with `run_on_shard` from their owning shards. With
    `limits`: values built from constants over `max_value` and merged rows over `max_result_bytes`
    (or over what a NATS message carries) are refused (413)."""
    if num_shards < 1:
        raise ValueError("num_shards must be >= 1")
    params = dict(params or {})
    if limits is not None:
        check_value_sizes(tokenize(cypher), params, limits.max_value)
    plan = plan_query(cypher, params)
    run = _Run(num_shards, run_on_shard)
    if plan.kind == "node":
        parts = await run.fan_out(lambda _s: (plan.query, plan.params))
    elif plan.kind == "rel":
        parts = await _run_rel(plan, run)
    elif plan.kind == "chain":  # multi-hop patterns: frontier exchanges (router/traverse.py)
        parts = await run_chain(plan, run, limits, timeout_s)
    else:
        parts = await _run_far_end(plan, run, limits, timeout_s)
    ordered = [permute(plan.merge, parts[s]) for s in sorted(parts)]
    rows = merge_rows(plan.merge, ordered)
    if ordered and not plan.embeddings:
        rows = without_embeddings(rows, ordered[0].types[:plan.merge.width])
    if limits is not None:
        _check_size(rows, limits)
    columns = ordered[0].columns[:plan.merge.width] if ordered else list(plan.merge.names)
    partial = not all(st.ok for st in run.status.values())
    return QueryResult(columns=columns, rows=rows, partial=partial, shards=run.status)


def without_embeddings(rows: list[list[Any]], types: list[str]) -> list[list[Any]]:
    """Whole nodes (`RETURN v`, `collect(v)`, `nodes(p)`) without their embedding, which a query
    gets only by naming it. Only in columns whose Kuzu type holds nodes (NODE, NODE[], STRUCT(x
    NODE), ...), and not where a map of the user's could have a `_label` key of its own."""
    cols = [i for i, t in enumerate(types) if "NODE" in t and "_label" not in t]
    if not cols:
        return rows
    out = [list(r) for r in rows]
    for r in out:
        for i in cols:
            r[i] = _strip_embedding(r[i])
    return out


def _strip_embedding(v: Any) -> Any:
    if isinstance(v, list):
        return [_strip_embedding(x) for x in v]
    if isinstance(v, dict):
        node = "_label" in v
        return {k: _strip_embedding(x) for k, x in v.items() if not (node and k == "embedding")}
    return v


async def _run_rel(plan: Plan, run: _Run) -> dict[int, ShardRows]:
    assert plan.probe is not None and plan.far_table is not None
    probe = plan.probe
    stubs = await run.fan_out(lambda _s: (probe, plan.params))
    owners = {row[0]: row[1] for p in stubs.values() for row in p.rows}
    real = await run.resolve(plan.far_table, owners, ("id",))
    confirmed = {s: sorted(row[0] for row in p.rows if row[0] in real) for s, p in stubs.items()}
    return await run.fan_out(lambda s: (plan.query, {**plan.params, REAL_IDS_PARAM: confirmed.get(s, [])}),
                             stubs)


def _check_size(rows: list[list[Any]], limits: QueryLimits) -> None:
    """ResourceLimit (413) if the merged rows are larger than the limit or than a reply can carry."""
    size = len(encode(rows))
    limit = min(limits.max_result_bytes, MAX_REPLY_BYTES)
    if size > limit:
        setting = "TORUA_QUERY_MAX_RESULT_MB" if limit == limits.max_result_bytes else "max_payload"
        raise ResourceLimit(
            f"the query's rows take {size} bytes; the limit is {limit} bytes ({setting}): add LIMIT, return fewer "
            "columns, or aggregate", limit=limit, setting=setting)


async def _run_far_end(plan: Plan, run: _Run, limits: QueryLimits | None = None,
                       timeout_s: float | None = None) -> dict[int, ShardRows]:
    far = plan.far_end
    assert far is not None
    parts = await run.fan_out(lambda _s: (far.gather, plan.params))
    if not parts:
        return {}
    gathered = _Gathered(far, list(parts.values()))
    gathered.found = await run.resolve(far.far_table, gathered.stub_owners(), far.far_cols)
    params = {**plan.params, REAL_IDS_PARAM: []}
    return {0: await asyncio.to_thread(gathered.run, plan.query, params, limits, timeout_s)}



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

    def run(self, query: str, params: dict[str, Any], limits: QueryLimits | None = None,
            timeout_s: float | None = None) -> ShardRows:
        nodes, edges = self.tables()
        size = sum(len(str(r)) for t in nodes.values() for r in t.values()) + 200 * len(edges)
        pool = min(max(256 * _MIB, 16 * size), 8192 * _MIB)
        with memory_database(pool) as conn:
            init_schema(conn, self.dim)
            for table, rows in nodes.items():
                _copy(conn, table, list(rows.values()), ())
            _copy(conn, self.far.rel_table, edges, ("from", "to"))
            if timeout_s is not None:  # Kuzu's own timeout: the statement is the router's, on its thread
                conn.set_query_timeout(max(int(timeout_s * 1000), 1))
            if limits is None:
                return execute_on_shard(conn, query, params)
            return execute_on_shard(conn, query, params, max_rows=limits.max_rows, max_value=limits.max_value,
                                    timeout_s=timeout_s)


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

