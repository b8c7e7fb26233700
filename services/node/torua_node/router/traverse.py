"""Execution of chain plans (`torua_node.cypher.chain`): multi-hop patterns as frontier exchanges.

Per hop one fan-out round: the first scans every shard for the start end's real nodes and their
relationships; each later one sends the whole frontier, grouped by owning shard (one request per shard
and way of leaving a node, never one per node), to the shards that own it. A variable-length hop is a
breadth-first search of one round per step. A pipeline's later clauses walk after the earlier ones,
from the nodes those reached at their bound variables. A last round fetches the rows of every node
touched. The
sub-graph so gathered — real nodes and the relationships between them, deduplicated (each is stored at
both ends) and loaded in a fixed order — is queried in a temporary in-memory Kuzu database with the
shard schema, and the result merged by `cypher.merge` (ORDER BY, ties, SKIP, LIMIT) like any other.

Limits: the relationships and nodes gathered count against TORUA_QUERY_MAX_ROWS (413 over it); every
shard round runs under the request's deadline (the caller's `run_on_shard`), and the final query under
Kuzu's timeout with what is left of it (408), in a worker process (a Kuzu crash answers 500 and
leaves the node up).
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Protocol

import pyarrow as pa

from torua.errors import InternalError, QueryTimeout, ResourceLimit
from torua.hashing import shard_for
from torua_node.cypher.chain import (
    FRONTIER_PARAM,
    REL_COLUMNS,
    REL_ENDS,
    REL_KEYS,
    ChainHop,
    ChainNode,
    ChainPlan,
    Expansion,
    expand_query,
    expansions,
    scan_query,
)
from torua_node.cypher.merge import ShardRows
from torua_node.cypher.planner import Plan
from torua_node.settings import QueryLimits
from torua_node.shard.query import execute_on_shard
from torua_node.storage.store import memory_database
from torua_node.storage.tables import STUB, TABLES, NodeTable, RelTable

__all__ = ["run_chain", "SubGraph", "gather_chain", "MAX_CHAIN_ROWS"]

# Without limits (tests, tools): at most this many relationships and nodes gathered.
MAX_CHAIN_ROWS = 1_000_000
_MIB = 1024 * 1024

Node = tuple[str, str]  # (table, id)


class Runner(Protocol):
    """What the executor needs of a query's fan-out state (router.query._Run)."""

    num_shards: int

    async def fan_out(self, query_for: Callable[[int], tuple[str, dict[str, Any]]],
                      shards: Iterable[int] | None = None) -> dict[int, ShardRows]: ...

    async def resolve(self, table: str, owners: dict[str, Any],
                      columns: tuple[str, ...]) -> dict[str, dict[str, Any]]: ...


class SubGraph:
    """Relationships gathered so far (deduplicated by their key) and the nodes they touch."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.edges: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.owners: dict[Node, Any] = {}  # every node touched -> its owner key
        self.rows: dict[str, dict[str, dict[str, Any]]] = {}  # table -> id -> row (real nodes)
        # Per variable (ChainNode.key): the nodes a walk reached at it, a superset of its bindings;
        # a later clause's walk from that variable starts there.
        self.positions: dict[str, dict[Node, Any]] = {}

    def add(self, exp: Expansion, row: list[Any]) -> Node:
        """Record one relationship row of `expand_query`; return its far end."""
        near, near_owner, far, far_owner, props = row[0], row[1], row[2], row[3], row[4:]
        src, dst = (near, far) if exp.near_is_source else (far, near)
        edge = dict(zip(REL_COLUMNS[exp.table], props), **{"from": src, "to": dst})
        key = (exp.table, src, dst, *(edge[k] for k in REL_KEYS[exp.table]))
        self.edges.setdefault(key, edge)
        self.owners[(exp.far, far)] = far_owner
        self.owners[(exp.near, near)] = near_owner
        self._check()
        return (exp.far, far)

    def add_node(self, node: Node, owner: Any) -> None:
        self.owners[node] = owner
        self._check()

    def record(self, key: str, nodes: dict[Node, Any]) -> None:
        if key and key not in self.positions:  # the first walk binding a variable: any is a superset
            self.positions[key] = dict(nodes)

    def _check(self) -> None:
        if len(self.edges) + len(self.owners) > self.max_rows:
            raise ResourceLimit(
                f"the pattern's walk gathers more than {self.max_rows} relationships and nodes"
                " (TORUA_QUERY_MAX_ROWS): filter its ends or shorten it", limit=self.max_rows,
                setting="TORUA_QUERY_MAX_ROWS")


async def gather_chain(plan: ChainPlan, params: dict[str, Any], run: Runner, max_rows: int) -> SubGraph:
    """The sub-graph holding every binding of the chain, and of the MATCH's other patterns, walked
    side by side (module docstring of cypher/chain.py)."""
    graph = SubGraph(max_rows)
    await asyncio.gather(*(_walk(c, graph, params, run) for c in (plan, *plan.also)))
    for stage in plan.stages:  # a pipeline's clauses in order: later walks start where earlier ones reached
        await asyncio.gather(*(_walk(c, graph, params, run) for c in stage))
    await _resolve(graph, plan, run)
    return graph


async def _walk(plan: ChainPlan, graph: SubGraph, params: dict[str, Any], run: Runner) -> None:
    # None: the first hop scans every shard (or the shards of start_ids)
    frontier = None if plan.start_from is None else graph.positions.get(plan.start_from)
    if not plan.hops:
        if frontier is None:
            graph.record(plan.nodes[0].key, await _scan(graph, plan.nodes[0], params, run, plan.start_ids))
        return
    for i, hop in enumerate(plan.hops):
        reached: dict[Node, Any] = {}
        # Nodes expanded without filters. Not the frontier: the first step expands it with the
        # node's own filters, and a frontier node that fails them may still be passed through.
        seen: set[Node] = set()
        current = frontier
        for step in range(hop.hi if hop.variable else 1):
            found, near = await _round(graph, hop, plan.nodes[i] if step == 0 else None, current, params, run,
                                       plan.start_ids)
            if i == 0 and step == 0:
                graph.record(plan.nodes[0].key, near)
            reached.update(found)
            current = {n: o for n, o in found.items() if n not in seen}
            seen.update(current)
            if not current:
                break
        wanted = plan.nodes[i + 1].labels
        frontier = {n: o for n, o in reached.items() if n[0] in wanted}
        graph.record(plan.nodes[i + 1].key, frontier)
        if not frontier:
            for n in plan.nodes[i + 2:]:  # nothing beyond: no binding has a node there
                graph.record(n.key, {})
            break


async def _scan(graph: SubGraph, node: ChainNode, params: dict[str, Any], run: Runner,
                start_ids: tuple[str, ...] | None) -> dict[Node, Any]:
    """A pattern of one node: its real nodes on every shard (those of start_ids only, when pinned)."""
    shards = None if start_ids is None else {shard_for(i, run.num_shards) for i in start_ids}
    labels = list(node.labels)
    answers = await asyncio.gather(*(run.fan_out(partial(_same, scan_query(node, t), params), shards)
                                     for t in labels))
    found: dict[Node, Any] = {}
    for label, parts in zip(labels, answers):
        for s in sorted(parts):
            for node_id, owner in parts[s].rows:
                graph.add_node((label, node_id), owner)
                found[(label, node_id)] = owner
    return found


async def _round(graph: SubGraph, hop: ChainHop, near: ChainNode | None, frontier: dict[Node, Any] | None,
                 params: dict[str, Any], run: Runner,
                 start_ids: tuple[str, ...] | None) -> tuple[dict[Node, Any], dict[Node, Any]]:
    """One fan-out round: the relationships of `hop` at the frontier (at every shard's real nodes of
    `near`'s tables when there is no frontier yet: only the shards of `start_ids` when the start is
    pinned to ids); returns the far ends reached and the near nodes left, with owner keys."""
    asks = []
    if frontier is None:
        assert near is not None
        shards = None if start_ids is None else {shard_for(i, run.num_shards) for i in start_ids}
        for label in near.labels:
            for exp in expansions(hop, label):
                query = expand_query(exp, hop, near, by_ids=False)
                asks.append((exp, run.fan_out(partial(_same, query, params), shards)))
    else:
        by_label: dict[str, dict[int, list[str]]] = {}
        for (label, node_id), owner in frontier.items():
            if near is not None and label not in near.labels:
                continue
            if owner is None:
                continue  # no owner key: cannot be real anywhere
            shard = shard_for(str(owner), run.num_shards)
            by_label.setdefault(label, {}).setdefault(shard, []).append(node_id)
        for label, by_shard in sorted(by_label.items()):
            for ids in by_shard.values():
                ids.sort()
            for exp in expansions(hop, label):
                query = expand_query(exp, hop, near, by_ids=True)
                asks.append((exp, run.fan_out(partial(_with_frontier, query, params, by_shard), by_shard)))
    answers = await asyncio.gather(*(a for _e, a in asks))
    found: dict[Node, Any] = {}
    left: dict[Node, Any] = {}
    for (exp, _a), parts in zip(asks, answers):
        for s in sorted(parts):
            for row in parts[s].rows:
                far = graph.add(exp, row)
                found[far] = row[3]
                left[(exp.near, row[0])] = row[1]
    return found, left


def _same(query: str, params: dict[str, Any], _shard: int) -> tuple[str, dict[str, Any]]:
    return query, params


def _with_frontier(query: str, params: dict[str, Any], by_shard: dict[int, list[str]],
                   shard: int) -> tuple[str, dict[str, Any]]:
    return query, {**params, FRONTIER_PARAM: by_shard[shard]}


async def _resolve(graph: SubGraph, plan: ChainPlan, run: Runner) -> None:
    """The rows of every node touched, from its owning shard: stubs and never-created ends drop out."""
    by_table: dict[str, dict[str, Any]] = {}
    for (table, node_id), owner in graph.owners.items():
        by_table.setdefault(table, {})[node_id] = owner
    tables = sorted(by_table)
    found = await asyncio.gather(*(run.resolve(t, by_table[t], plan.columns.get(t, ("id",))) for t in tables))
    graph.rows = dict(zip(tables, found))


def load_and_run(graph: SubGraph, plan: Plan, limits: QueryLimits | None, timeout_s: float | None) -> ShardRows:
    """Load the sub-graph into a temporary database and run the plan's query there (on this thread)."""
    nodes = {t: [rows[i] for i in sorted(rows)] for t, rows in graph.rows.items()}
    real = {(t, i) for t, rows in graph.rows.items() for i in rows}
    edges: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(graph.edges, key=lambda k: tuple(map(str, k))):
        table = key[0]
        src, dst = REL_ENDS[table]
        if (src, key[1]) in real and (dst, key[2]) in real:
            edges.setdefault(table, []).append(graph.edges[key])
    size = sum(len(str(r)) for rows in nodes.values() for r in rows) + 200 * len(graph.edges)
    pool = min(max(256 * _MIB, 16 * size), 8192 * _MIB)
    with memory_database(pool) as conn:
        for t in TABLES:  # only the tables graph.query reads: a third of the time of all of them
            if not (isinstance(t, NodeTable) and t.internal):
                conn.execute(t.create())
        for table, rows in nodes.items():
            conn.execute(f"COPY {table} FROM $t", {"t": _arrow(_BY_NAME[table], rows)})
        for table, rows in edges.items():
            conn.execute(f"COPY {table} FROM $t", {"t": _arrow(_BY_NAME[table], rows)})
        if timeout_s is not None:
            conn.set_query_timeout(max(int(timeout_s * 1000), 1))
        if limits is None:
            return execute_on_shard(conn, plan.query, plan.params)
        return execute_on_shard(conn, plan.query, plan.params, max_rows=limits.max_rows, max_value=limits.max_value,
                                timeout_s=timeout_s)


# The final query runs in a worker process, never in the node's own: kuzu 0.11.3 crashes (SIGSEGV) on
# some cyclic patterns mixing undirected and untyped relationships, e.g.
# (a)-[r]-(b)-->(c)-[s]->(d)<-[t:RELATES]-(a) RETURN t.type, and a crash must not take the node down.
# Spawned (a forked child of a process with Kuzu open hangs), kept warm, replaced when one dies.
WORKERS = 2
_WORKER_MARGIN_S = 2.0
_pool_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _executor() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=WORKERS, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _discard(pool: ProcessPoolExecutor, kill: bool) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    if kill:  # a worker past its deadline: Kuzu's own timeout did not stop it
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


_BY_NAME = {t.name: t for t in TABLES}


def _arrow(table: NodeTable | RelTable, rows: list[dict[str, Any]]) -> pa.Table:
    """JSON-shaped rows (as `to_json_value` made them: BLOBs in base64) as an Arrow table of the
    declared types; columns not fetched are NULL, the stub flag false (only real nodes are loaded)."""
    cols: dict[str, pa.Array] = {}
    if isinstance(table, RelTable):
        cols = {"from": pa.array([r["from"] for r in rows], pa.string()),
                "to": pa.array([r["to"] for r in rows], pa.string())}
    for c in table.columns:
        values: list[Any] = [False if c.name == STUB else r.get(c.name) for r in rows]
        if c.type == "BLOB":
            values = [None if v is None else base64.b64decode(v) for v in values]
        cols[c.name] = pa.array(values, c.arrow)
    return pa.table(cols)


async def run_chain(plan: Plan, run: Runner, limits: QueryLimits | None = None,
                    timeout_s: float | None = None) -> dict[int, ShardRows]:
    """Gather the chain's sub-graph across the shards, answer the query on it: the rows to merge."""
    assert plan.chain is not None
    started = time.monotonic()
    graph = await gather_chain(plan.chain, plan.params, run, limits.max_rows if limits else MAX_CHAIN_ROWS)
    left = None if timeout_s is None else max(timeout_s - (time.monotonic() - started), 0.001)
    pool = _executor()
    try:
        future = asyncio.wrap_future(pool.submit(load_and_run, graph, plan, limits, left))
        rows = await asyncio.wait_for(future, None if left is None else left + _WORKER_MARGIN_S)
    except BrokenProcessPool:
        _discard(pool, kill=False)
        raise InternalError(
            "the query crashed the worker answering it on the gathered sub-graph (kuzu 0.11.3 crashes on some"
            " cyclic patterns mixing undirected and untyped relationships); the node is unaffected: name the"
            " relationships' types and directions, or split the cycle") from None
    except TimeoutError:
        _discard(pool, kill=True)
        raise QueryTimeout(f"the query ran past its time limit ({timeout_s:g}s) on the gathered sub-graph",
                           timeout_s=timeout_s) from None
    return {0: rows}

