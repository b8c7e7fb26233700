"""Local reads of one shard replica. Stubs are storage detail: never returned as entities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import kuzu
import msgspec
import numpy as np

from torua.model import EdgeOut, EntityOut
from torua_node.storage.keyspace import table_size
from torua_node.storage.statements import id_rows, run
from torua_node.storage.store import all_rows

__all__ = ["EMPTY_JSON", "get_entity", "entities_by_ids", "edges", "kv_get", "entity_out", "edge_out"]

Direction = Literal["out", "in", "both"]
_ENTITY_COLS = "e.id, e.name, e.type, e.description, e.properties"
_EDGE_COLS = "a.id, r.type, b.id, r.weight, r.properties, r.chunks"


def get_entity(conn: kuzu.Connection, id: str, embedding: bool = False) -> EntityOut | None:
    extra = ", e.embedding" if embedding else ""
    rows = all_rows(conn, f"MATCH (e:Entity {{id: $id}}) WHERE NOT e.stub RETURN {_ENTITY_COLS}{extra}", {"id": id})
    return _entity(rows[0][:5], rows[0][5] if embedding else None) if rows else None


def entities_by_ids(conn: kuzu.Connection, ids: list[str], *, embeddings: bool = False) -> list[EntityOut]:
    """The non-stub entities among `ids`, in the order first requested; absent ids are skipped."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    extra = ", e.embedding" if embeddings else ""
    rows = _rows(run(conn, f"MATCH (e:Entity {{id: u_id}}) WHERE NOT e.stub RETURN {_ENTITY_COLS}{extra}",
                     id_rows(wanted), table_size(conn, "Entity")))
    found = {r[0]: _entity(r[:5], r[5] if embeddings else None) for r in rows}
    return [found[i] for i in wanted if i in found]


def edges(
    conn: kuzu.Connection, ids: list[str], direction: Direction, types: list[str] | None, limit: int
) -> list[EdgeOut]:
    """The RELATES edges stored here that leave (`out`), enter (`in`) or touch (`both`) any of `ids`,
    ordered by (source, type, target), each once, at most `limit`. `types` None or empty: all types."""
    if direction not in ("out", "in", "both"):
        raise ValueError(f"direction must be out, in or both, not {direction!r}")
    wanted = list(dict.fromkeys(ids))
    if not wanted or limit <= 0:
        return []
    patterns = []
    if direction in ("out", "both"):
        patterns.append("(a:Entity {id: u_id})-[r:RELATES]->(b:Entity)")
    if direction in ("in", "both"):
        patterns.append("(a:Entity)-[r:RELATES]->(b:Entity {id: u_id})")
    where = " WHERE r.type IN $types" if types else ""
    params: dict[str, Any] = {"n": limit}
    if types:
        params["types"] = list(types)
    table, keys = id_rows(wanted), table_size(conn, "Entity", "RELATES")
    found: dict[tuple[str, str, str], list[Any]] = {}
    for pattern in patterns:
        # Kuzu orders strings by code point like Python, so each side's (or each id's) first `limit`
        # rows hold the merged first `limit`.
        q = f"MATCH {pattern}{where} RETURN {_EDGE_COLS} ORDER BY a.id, r.type, b.id LIMIT $n"
        for row in _rows(run(conn, q, table, keys, params)):
            found.setdefault((row[0], row[1], row[2]), row)
    return [_edge(found[k]) for k in sorted(found)[:limit]]


def kv_get(conn: kuzu.Connection, key: str) -> str | None:
    rows = all_rows(conn, "MATCH (k:KV {key: $k}) RETURN k.value", {"k": key})
    return rows[0][0] if rows else None


def _rows(columns: list[list[Any]]) -> list[list[Any]]:
    return [list(row) for row in zip(*columns)]


EMPTY_JSON = "{}"  # the stored properties of most entities and relations


def _props(text: str | None) -> dict[str, Any]:
    if not text or text == EMPTY_JSON:  # no decode for the common case: reads build many edges
        return {}
    value = msgspec.json.decode(text)
    return value if isinstance(value, dict) else {"value": value}


def entity_out(id_: str, row: Sequence[Any], embedding: bytes | None = None) -> EntityOut:
    """An entity's answer from its row (name, type, description, properties JSON text), as every read
    of it answers (also storage.graphview's)."""
    name, type_, description, properties = row
    vector = None if embedding is None else np.frombuffer(embedding, "<f4").tolist()
    return EntityOut(id=id_, name=name or "", type=type_ or "", description=description or "",
                     properties=_props(properties), embedding=vector)


def edge_out(key: Sequence[Any], value: Sequence[Any]) -> EdgeOut:
    """An edge's answer from its key (source, type, target) and value (weight, properties JSON text,
    chunk ids), as every read of it answers (also storage.graphview's)."""
    s, ty, t = key
    w, p, ch = value
    return EdgeOut(source=s, target=t, type=ty, weight=w, properties=_props(p), chunks=list(ch))


def _entity(row: list[Any], embedding: bytes | None) -> EntityOut:
    return entity_out(row[0], row[1:5], embedding)


def _edge(row: list[Any]) -> EdgeOut:
    s, ty, t, w, p, ch = row
    return edge_out((s, ty, t), (w, p, msgspec.json.decode(ch) if ch else []))
