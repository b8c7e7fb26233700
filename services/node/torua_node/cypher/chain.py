"""Multi-hop patterns of `torua.graph.query`: the plan of a frontier exchange, and the queries it sends
to shards. Pure: no I/O.

A chain pattern `(n0)-[r1]-(n1)-...-(nk)` (fixed or variable-length relationships, any direction,
typed or inferred from the schema, a path variable, SHORTEST) is answered in two steps:

1. Gather, hop by hop, the sub-graph that holds every binding of the pattern. The walk starts at the
   more selective end. Hop 1 scans every shard for that end's real nodes (its filters pushed down)
   and their relationships of the hop's tables; every later round sends the frontier (the far ends
   found so far) to the shards that own them, batched per shard, which keep those that are real there
   (and pass the node's own filters) and return their relationships. A relationship of a node is
   stored on that node's shard whichever way it points, so the owner sees all of them. A
   variable-length hop `*lo..hi` is a breadth-first search of `hi` rounds without filters (its
   intermediate nodes are constrained by nothing but the tables). A last round fetches, from their
   owners, the rows of every node the gathered relationships touch; relationships to nodes that were
   never created (stubs only) are dropped.
2. Run the user's query, rendered from its checked tokens, on that sub-graph loaded into a temporary
   in-memory Kuzu database with the shard schema, and merge (DISTINCT, ORDER BY, SKIP, LIMIT) with
   `cypher.merge`.

Why that is exact: the sub-graph is a sub-graph of the whole (node rows and relationships are copied,
never changed), so every binding found in it is a binding of the whole; and every binding of the
whole lies in it, because the filters used to prune are conjuncts of the WHERE on one variable alone
(true of every binding), and a breadth-first search of `hi` rounds reaches every walk of at most `hi`
relationships — and, for shortest paths, every path that is shortest in the whole graph (a node at
distance d from the start is expanded in round d + 1, with all its relationships). Patterns are
monotone (no negation over the graph's structure is accepted), so nothing else can change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torua_node.storage.tables import NODE_TABLES, REL_TABLES

__all__ = [
    "ChainNode",
    "ChainHop",
    "ChainPlan",
    "Expansion",
    "expansions",
    "expand_query",
    "scan_query",
    "FRONTIER_PARAM",
    "FAR_VAR",
    "MAX_VAR_LENGTH",
    "REL_ENDS",
    "REL_COLUMNS",
]

Direction = Literal["->", "<-", "-"]
FRONTIER_PARAM = "__q_frontier"
FAR_VAR = "__qfar"
NEAR_VAR = "__qnear"
HOP_VAR = "__qhop"
# The longest variable-length relationship accepted: every round of a search is one fan-out, and the
# gathered sub-graph grows with the radius.
MAX_VAR_LENGTH = 10
# Relationship tables graph.query reads, and their ends (source, target).
REL_ENDS: dict[str, tuple[str, str]] = {t.name: (t.source.name, t.target.name) for t in REL_TABLES}
REL_COLUMNS: dict[str, tuple[str, ...]] = {t.name: t.column_names for t in REL_TABLES}
REL_KEYS: dict[str, tuple[str, ...]] = {t.name: t.key for t in REL_TABLES}
_STUBBED = frozenset(t.name for t in NODE_TABLES if t.stubbed)
_OWNER = {t.name: t.owner for t in NODE_TABLES if t.owner is not None}


@dataclass(frozen=True, slots=True)
class ChainNode:
    var: str  # the name it has in shard queries (the user's, or a generated one)
    labels: tuple[str, ...]  # the tables it may bind to (from its label, or inferred from the schema)
    inline: str  # its inline map, rendered ("" if none); pushed only with exactly one label
    filters: tuple[str, ...]  # WHERE conjuncts on this node alone, rendered; pushed with one label
    # The variable's identity across a WITH pipeline (an alias `WITH a AS z` is a's): walks record the
    # nodes reached at it, and a later clause's walk from it starts there ("" for a generated one).
    key: str = ""


@dataclass(frozen=True, slots=True)
class ChainHop:
    var: str
    tables: tuple[str, ...]
    direction: Direction  # in walking order: "->" points from the previous node to the next
    lo: int
    hi: int
    variable: bool  # *lo..hi (or SHORTEST): searched without filters
    inline: str  # fixed length, one table: its inline map, rendered
    filters: tuple[str, ...]  # fixed length, one table: WHERE conjuncts on it alone


@dataclass(frozen=True, slots=True)
class ChainPlan:
    nodes: tuple[ChainNode, ...]  # in walking order (the pattern's, or reversed)
    hops: tuple[ChainHop, ...]  # hops[i] joins nodes[i] and nodes[i + 1]
    columns: dict[str, tuple[str, ...]]  # per node table: the columns the sub-graph needs
    # The ids the start node is pinned to, when it is placed by id: the first hop asks their shards only.
    start_ids: tuple[str, ...] | None = None
    # The MATCH's other comma-separated patterns, walked the same way into the same sub-graph (their
    # bindings join on shared variables in the final query; each walk holds all of its own).
    also: tuple[ChainPlan, ...] = ()
    # The walk starts from the nodes an earlier clause's walk reached at this variable (a pipeline's
    # OPTIONAL MATCH or MATCH from a bound variable); None: from start_ids, or a scan.
    start_from: str | None = None
    # OPTIONAL MATCH / WITH pipelines: walks in clause order, stage by stage (the walks of one stage at
    # once), after this plan's own. A plan without hops is a node scan.
    stages: tuple[tuple[ChainPlan, ...], ...] = ()

    @property
    def rounds(self) -> int:
        """Fan-out rounds: one per hop (per step of a search), and the node rows (patterns walk at once)."""
        def walk(c: ChainPlan) -> int:
            return max(sum(h.hi if h.variable else 1 for h in c.hops), 1)
        return max(walk(c) for c in (self, *self.also)) + sum(max(map(walk, s)) for s in self.stages if s) + 1


@dataclass(frozen=True, slots=True)
class Expansion:
    """One way a hop leaves a node of `near` label: through `table`, the near node at its source end
    (`near_is_source`) or at its target end, reaching a node of `far` label."""

    table: str
    near: str
    far: str
    near_is_source: bool


def expansions(hop: ChainHop, near: str) -> list[Expansion]:
    out = []
    for table in hop.tables:
        src, dst = REL_ENDS[table]
        if hop.direction in ("->", "-") and src == near:
            out.append(Expansion(table, near, dst, True))
        if hop.direction in ("<-", "-") and dst == near:
            out.append(Expansion(table, near, src, False))
    return out


def expand_query(exp: Expansion, hop: ChainHop, near: ChainNode | None, by_ids: bool) -> str:
    """The relationships of `exp` at real near nodes of this shard — those in $__q_frontier when
    `by_ids`, all of them (the first hop's scan) otherwise — with `near`'s filters when it is the
    pattern's node (None: an intermediate node of a search, unfiltered) and the hop's own when fixed.
    Rows: near id and owner key, far id and owner key (what places a node: a stub keeps it), the
    relationship's columns."""
    pushed_node = near is not None and len(near.labels) == 1
    nv = near.var if near is not None else NEAR_VAR
    inline = f" {near.inline}" if pushed_node and near is not None and near.inline else ""
    pushed_hop = not hop.variable and len(hop.tables) == 1
    hv = hop.var if pushed_hop else HOP_VAR
    hinline = f" {hop.inline}" if pushed_hop and hop.inline else ""
    rel = f"[{hv}:{exp.table}{hinline}]"
    arrow = f"-{rel}->" if exp.near_is_source else f"<-{rel}-"
    conds = []
    if exp.near in _STUBBED:
        conds.append(f"{nv}.stub = false")
    if by_ids:
        conds.append(f"{nv}.id IN ${FRONTIER_PARAM}")
    if pushed_node and near is not None:
        conds += [f"({c})" for c in near.filters]
    if pushed_hop:
        conds += [f"({c})" for c in hop.filters]
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    cols = [f"{nv}.id", f"{nv}.{_OWNER[exp.near]}", f"{FAR_VAR}.id", f"{FAR_VAR}.{_OWNER[exp.far]}",
            *(f"{hv}.{c}" for c in REL_COLUMNS[exp.table])]
    ret = ", ".join(f"{c} AS __qc{k}" for k, c in enumerate(cols))  # an entity's owner key is its id
    return f"MATCH ({nv}:{exp.near}{inline}){arrow}({FAR_VAR}:{exp.far}){where} RETURN {ret}"


def scan_query(node: ChainNode, label: str) -> str:
    """The real nodes of `label` at this shard that pass `node`'s own filters (pushed when it has one
    label), as (id, owner key): a pattern of one node in an OPTIONAL MATCH / WITH pipeline."""
    pushed = len(node.labels) == 1
    inline = f" {node.inline}" if pushed and node.inline else ""
    conds = [f"{node.var}.stub = false"] if label in _STUBBED else []
    if pushed:
        conds += [f"({c})" for c in node.filters]
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    return (f"MATCH ({node.var}:{label}{inline}){where}"
            f" RETURN {node.var}.id AS __qc0, {node.var}.{_OWNER[label]} AS __qc1")
