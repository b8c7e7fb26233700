"""A shard replica's graph in memory: its real entities' rows (without embeddings) and its RELATES
edges in both directions, answering what `storage.reads` answers from Kuzu for `get_entity`
(without embedding), `entities_by_ids` and `edges`, identically (order, de-duplication, limit).

Kept in step with apply by the net changes of each batch (`shard.apply.ApplyResult.update_graph`),
applied on the event loop before the batch's applied_seq becomes visible, so a read sees exactly the
state as of the replica's applied_seq and never waits for the shard thread. Built at open by two
scans of the database (`load_graph_view`).

Layout (measured against alternatives in docs/operations.md, "Memory"): one dict of entity rows, and
per node two dicts, edges out and edges in, keyed by the same (source, type, target) tuple object
with the same value tuple (weight, properties JSON text, chunk ids): an edge costs one key, one value
and two dict slots, and the key is its sort order. Ids and types are interned, so an id is stored
once however many edges name it. Stubs (the far ends of relations whose entity lives on
another shard) have adjacency but no entity row, as in Kuzu.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterable, Sequence

import kuzu
import msgspec

from torua.model import EdgeOut, EntityOut
from torua_node.storage.reads import EMPTY_JSON, Direction, edge_out, entity_out
from torua_node.storage.store import all_columns

__all__ = ["GraphView", "EntityRow", "RelKey", "RelValue", "entity_row", "relation_item", "load_graph_view"]

# name, type, description, properties (JSON text, decoded per read as reads.py does)
EntityRow = tuple[str, str, str, str]
# source, type, target: a relation's identity, and the order edges are answered in
RelKey = tuple[str, str, str]
# weight, properties (JSON text), chunk ids
RelValue = tuple[float, str, tuple[str, ...]]
_Adjacency = dict[str, dict[RelKey, RelValue]]

_intern = sys.intern


def entity_row(
    name: str | None, type_: str | None, description: str | None, properties: str | None
) -> EntityRow:
    """The stored form of an entity's row (types interned: a few values shared by every row)."""
    props = properties or ""
    return (
        name or "",
        _intern(type_ or ""),
        description or "",
        EMPTY_JSON if props == EMPTY_JSON else props,
    )


def relation_item(
    source: str, type_: str, target: str, weight: float, properties: str, chunks: Sequence[str]
) -> tuple[RelKey, RelValue]:
    """The stored form of one relation: ids and type interned (each id is named by many edges; the
    chunk ids, a few edges each, are not: it would cost apply more than it saves)."""
    return (
        (_intern(source), _intern(type_), _intern(target)),
        (weight, EMPTY_JSON if properties == EMPTY_JSON else properties, tuple(chunks)),
    )


class GraphView:
    __slots__ = ("_entities", "_in", "_out")

    def __init__(self) -> None:
        self._entities: dict[str, EntityRow] = {}
        self._out: _Adjacency = {}
        self._in: _Adjacency = {}

    # --- changes ---------------------------------------------------------------------------------

    def apply(
        self,
        entities: Iterable[tuple[str, EntityRow]],
        entities_removed: Iterable[str],
        relations: Iterable[tuple[RelKey, RelValue]],
        relations_removed: Iterable[RelKey],
    ) -> None:
        """Apply net changes (per key one state: stored or removed, so the order does not matter)."""
        ents = self._entities
        for i in entities_removed:
            ents.pop(i, None)
        for i, row in entities:
            ents[_intern(i)] = row
        for key in relations_removed:
            self._unlink(key)
        for key, value in relations:
            self._link(key, value)

    def _link(self, key: RelKey, value: RelValue) -> None:
        out = self._out.get(key[0])
        if out is None:
            out = self._out[key[0]] = {}
        out[key] = value
        inc = self._in.get(key[2])
        if inc is None:
            inc = self._in[key[2]] = {}
        inc[key] = value

    def _unlink(self, key: RelKey) -> None:
        for side, end in ((self._out, key[0]), (self._in, key[2])):
            adj = side.get(end)
            if adj is not None and adj.pop(key, None) is not None and not adj:
                del side[end]  # no empty dicts left behind by deletes

    # --- reads (as storage.reads answers them) ------------------------------------------------

    def get(self, id: str) -> EntityOut | None:
        row = self._entities.get(id)
        return None if row is None else entity_out(id, row)

    def entities_by_ids(self, ids: list[str]) -> list[EntityOut]:
        """The non-stub entities among `ids`, in the order first requested; absent ids are skipped."""
        ents = self._entities
        out = []
        for i in dict.fromkeys(ids):
            row = ents.get(i)
            if row is not None:
                out.append(entity_out(i, row))
        return out

    def edges(
        self, ids: list[str], direction: Direction, types: list[str] | None, limit: int
    ) -> list[EdgeOut]:
        """The edges that leave (`out`), enter (`in`) or touch (`both`) any of `ids`, ordered by
        (source, type, target), each once, at most `limit`. `types` None or empty: all types."""
        if direction not in ("out", "in", "both"):
            raise ValueError(f"direction must be out, in or both, not {direction!r}")
        wanted = list(dict.fromkeys(ids))
        if not wanted or limit <= 0:
            return []
        sides = (
            (self._out,)
            if direction == "out"
            else (self._in,)
            if direction == "in"
            else (self._out, self._in)
        )
        only = set(types) if types else None
        found: dict[RelKey, RelValue] = {}
        for side in sides:
            for i in wanted:
                adj = side.get(i)
                if adj is None:
                    continue
                if only is None:
                    found.update(adj)
                else:
                    found.update((k, v) for k, v in adj.items() if k[1] in only)
        keys = sorted(found) if len(found) <= limit else heapq.nsmallest(limit, found)
        return [edge_out(k, found[k]) for k in keys]

    # --- inspection ------------------------------------------------------------------------------

    @property
    def entity_count(self) -> int:
        return len(self._entities)

    @property
    def relation_count(self) -> int:
        return sum(map(len, self._out.values()))

    def contents(self) -> tuple[dict[str, EntityRow], dict[RelKey, RelValue]]:
        """Everything held, as plain dicts (for tests and checks); ValueError if the two directions
        of the adjacency disagree."""
        out = {k: v for adj in self._out.values() for k, v in adj.items()}
        inc = {k: v for adj in self._in.values() for k, v in adj.items()}
        if out != inc:
            raise ValueError(f"adjacency out of step: {len(out)} edges out, {len(inc)} in")
        return dict(self._entities), out


def load_graph_view(conn: kuzu.Connection) -> GraphView:
    """The view of what the database holds: one scan of the real entities, one of the edges."""
    view = GraphView()
    cols = all_columns(
        conn, "MATCH (e:Entity) WHERE NOT e.stub RETURN e.id, e.name, e.type, e.description, e.properties"
    )
    entities = [(i, entity_row(n, ty, d, p)) for i, n, ty, d, p in zip(*cols)]
    del cols
    cols = all_columns(
        conn,
        "MATCH (a:Entity)-[r:RELATES]->(b:Entity)"
        " RETURN a.id, r.type, b.id, r.weight, r.properties, r.chunks",
    )
    relations = [
        relation_item(s, ty, d, w, p, msgspec.json.decode(ch) if ch else ())
        for s, ty, d, w, p, ch in zip(*cols)
    ]
    del cols
    view.apply(entities, (), relations, ())
    return view
