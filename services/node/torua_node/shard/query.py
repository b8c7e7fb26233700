"""The shard side of `torua.graph.query`: a planned query run on a connection of its own (in the
shard's query worker process, `shard/worker.py`, or the router's temporary database).

Read-only twice over: the statement passes the guard again (behind the planner's check on the
router) and runs in a read-only transaction. Kuzu's errors become BadRequest (the user's query),
QueryTimeout (interrupted at its time limit), ResourceLimit (out of memory: the query's fault, since
the database it runs on serves only queries) or Unavailable (the shard is unwell); values become
JSON-able Python, deterministically.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import kuzu

from torua.errors import BadRequest, QueryTimeout, ResourceLimit, ToruaError, Unavailable
from torua_node.cypher.guard import check_read_only, check_value_sizes
from torua_node.cypher.merge import ShardRows
from torua_node.storage.store import OUT_OF_MEMORY, TRANSIENT_ERRORS

__all__ = ["execute_on_shard", "to_json_value"]

_MAX_ERROR_LEN = 1000


# Kuzu's errors that mean the query ran out of memory (buffer pool, or an allocation refused by the
# worker's address-space limit).
_MEMORY_ERRORS = (OUT_OF_MEMORY, "std::bad_alloc", "Mmap for size")


def execute_on_shard(
    conn: kuzu.Connection,
    query: str,
    params: dict[str, Any],
    *,
    max_rows: int | None = None,
    max_value: int | None = None,
    timeout_s: float | None = None,
) -> ShardRows:
    """Run a planned query on one shard replica, in a read-only transaction (a second guard behind
    the planner's check). Over `max_rows` rows, or building a value over `max_value`: ResourceLimit.
    Kuzu's errors become BadRequest, QueryTimeout, ResourceLimit or Unavailable (see above)."""
    toks = check_read_only(query, params)
    if max_value is not None:
        check_value_sizes(toks, params, max_value)
    used = {t.text[1:] for t in toks if t.kind == "param"}
    return _read_only(
        conn,
        lambda: _to_rows(conn.execute(query, {k: v for k, v in params.items() if k in used}), max_rows),
        timeout_s,
    )


def _read_only(conn: kuzu.Connection, fn: Callable[[], ShardRows], timeout_s: float | None = None) -> ShardRows:
    conn.execute("BEGIN TRANSACTION READ ONLY")
    try:
        out = fn()
        conn.execute("COMMIT")
        return out
    except RuntimeError as exc:
        _rollback(conn)
        raise _kuzu_error(exc, timeout_s) from None
    except MemoryError:
        _rollback(conn)
        raise ResourceLimit("the query ran out of memory (TORUA_QUERY_MEMORY_MB)", setting="TORUA_QUERY_MEMORY_MB") from None
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: kuzu.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except RuntimeError:
        pass  # Kuzu already ended the transaction when the statement failed


def _kuzu_error(exc: RuntimeError, timeout_s: float | None = None) -> ToruaError:
    text = str(exc)[:_MAX_ERROR_LEN]
    if text.startswith("Interrupted"):
        limit = f" (limit {timeout_s:g}s)" if timeout_s is not None else ""
        return QueryTimeout(f"the query ran past its time limit{limit} and was cancelled", timeout_s=timeout_s)
    if any(m in text for m in _MEMORY_ERRORS):
        return ResourceLimit(
            "the query needs more memory than a query may use (TORUA_QUERY_MEMORY_MB, and the query buffer pool "
            f"TORUA_QUERY_BUFFER_POOL_MB): {text}", setting="TORUA_QUERY_MEMORY_MB")
    if text.startswith(TRANSIENT_ERRORS):  # the shard is unwell, not the query
        return Unavailable(f"the shard could not run the query: {text}")
    return BadRequest(f"query failed: {text}")


def _to_rows(result: kuzu.QueryResult | list[kuzu.QueryResult], max_rows: int | None = None) -> ShardRows:
    if isinstance(result, list):  # several statements: refused before, never expected here
        raise BadRequest("multiple statements are not allowed")
    types = [str(t) for t in result.get_column_data_types()]
    for t in types:
        if "INTERNAL_ID" in t or t.startswith(("REL", "RECURSIVE_REL")):
            raise BadRequest(f"values of type {t} cannot be returned: they are shard-local")
    if max_rows is not None and result.get_num_tuples() > max_rows:
        raise ResourceLimit(
            f"the query gives {result.get_num_tuples()} rows on one shard; the limit is {max_rows} "
            "(TORUA_QUERY_MAX_ROWS): add LIMIT or aggregate", limit=max_rows, setting="TORUA_QUERY_MAX_ROWS")
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

