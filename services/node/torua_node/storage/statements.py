"""Run one Cypher statement over a table of rows: set-at-a-time, or row by row when that is cheaper.

Apply's statements and the replica's key reads take their input from an Arrow table (`LOAD FROM
$t MATCH (n {id: u_id}) ...`). kuzu 0.11.3 plans such a statement as a hash join over a scan of
every row of the matched tables, whatever the number of input rows, while the same statement with
parameters for one row is a primary-key probe. At 300k entities a batch statement costs ~17-45 ms,
one row ~0.3-1 ms (`bench/large_shard.py`). So a statement goes row by row when its table is large
for so few rows: small writes and key reads on a large shard stay fast, bulk loads stay
set-at-a-time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, cast

import kuzu
import pyarrow as pa

from torua_node.storage.store import execute

__all__ = ["KEYS_PER_ROW", "id_rows", "run"]

# Row by row when the largest table the statement matches in has at least this many keys per input
# row (break-even measured at 300k entities: 40-150 rows, i.e. 2,000-7,500 keys per row).
KEYS_PER_ROW = 5_000
_ARROW_CHUNK = 1 << 20
_VARIABLE = re.compile(r"\bu_\w+")
# kuzu 0.11.3 takes no bytes parameter; BLOB('\xNN...') decodes each escaped byte exactly.
_ESCAPED = [f"\\x{b:02x}" for b in range(256)]


def run(conn: kuzu.Connection, query: str, rows: pa.Table, keys: int,
        params: dict[str, Any] | None = None) -> list[list[Any]]:
    """Run `query` once per row of `rows`, whose columns are its `u_*` variables, with `params` for
    its other parameters; the result's columns as lists. `keys` is the size of the largest table the
    query matches in. Row by row, an ORDER BY or LIMIT applies to each row's results."""
    if rows.num_rows == 0 or rows.num_rows * KEYS_PER_ROW > keys:
        result = execute(conn, f"LOAD FROM $t {query}", {**(params or {}), "t": rows})
        if " RETURN " not in query:
            return []
        return [c.to_pylist() for c in result.get_as_arrow(_ARROW_CHUNK).columns]
    return _row_by_row(conn, query, rows, params or {})


def id_rows(ids: Iterable[str]) -> pa.Table:
    """Distinct ids, in first-seen order, as the `u_id` rows of a statement."""
    return pa.table({"u_id": pa.array(list(dict.fromkeys(ids)), pa.string())})


def _row_by_row(conn: kuzu.Connection, query: str, rows: pa.Table, params: dict[str, Any]) -> list[list[Any]]:
    blobs = {f.name for f in rows.schema if pa.types.is_binary(f.type)}
    statement = _VARIABLE.sub(lambda m: f"BLOB(${m[0]})" if m[0] in blobs else f"${m[0]}", query)
    found: list[list[Any]] = []
    width = 0
    for row in rows.to_pylist():
        for name in blobs:
            row[name] = "".join(map(_ESCAPED.__getitem__, row[name]))
        result = execute(conn, statement, {**params, **row})
        width = len(result.get_column_names())
        found.extend(cast("list[list[Any]]", result.get_all()))
    return [list(col) for col in zip(*found)] if found else [[] for _ in range(width)]
