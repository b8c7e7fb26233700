"""Merging shard answers into the answer one database holding all the data would give: pure logic.

Rows come back in a deterministic order: ORDER BY keys compared as Kuzu compares them, then ties
broken by the binding's identity (ids) or, after DISTINCT or aggregation, by all columns in a fixed
total order. So SKIP and LIMIT never depend on the number of shards. Aggregates arrive as partials
(the planner rewrites them) and are recombined here.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import msgspec

from torua.errors import BadRequest
from torua_node.cypher.planner import AggSpec, MergeSpec

__all__ = ["ShardRows", "merge_rows", "permute"]

_ORDERABLE = frozenset({"BOOL", "INT8", "INT16", "INT32", "INT64", "INT128", "UINT8", "UINT16", "UINT32",
                        "UINT64", "SERIAL", "FLOAT", "DOUBLE", "STRING", "DATE", "TIMESTAMP"})


class ShardRows(msgspec.Struct):
    """One shard's answer: Kuzu's column names and types, and JSON-able rows."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


def permute(spec: MergeSpec, part: ShardRows) -> ShardRows:
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
