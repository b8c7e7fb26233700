"""The tables of one shard replica: the single declaration everything else derives from.

The DDL (`schema.py`), the Arrow rows apply writes (`shard/apply.py`), the key scans of
`keyspace.py`, the dumps and counts of `digest.py`, and the tables and columns graph.query may read
(`cypher/`) are all computed from `TABLES`. Why the types are what they are (BLOB embeddings, JSON in
STRING) is told in `schema.py`; changing a table means raising its SCHEMA_VERSION.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

__all__ = [
    "Column",
    "KuzuType",
    "NodeTable",
    "RelTable",
    "Table",
    "ENTITY",
    "DOCUMENT",
    "CHUNK",
    "RELATES",
    "MENTIONS",
    "KV",
    "META",
    "FAILURE",
    "VERSION",
    "TOMBSTONE",
    "TABLES",
    "NODE_TABLES",
    "REL_TABLES",
    "STUB",
    "ddl",
    "entity_version_key",
    "relation_version_key",
]

KuzuType = Literal["STRING", "BLOB", "BOOLEAN", "INT64", "DOUBLE"]

_ARROW: dict[KuzuType, pa.DataType] = {
    "STRING": pa.string(), "BLOB": pa.binary(), "BOOLEAN": pa.bool_(), "INT64": pa.int64(),
    "DOUBLE": pa.float64(),
}
# What a stub row holds in each column it has no content for: empty values, never NULL (apply.py).
_EMPTY: dict[KuzuType, str | bytes | bool | int | float] = {
    "STRING": "", "BLOB": b"", "BOOLEAN": False, "INT64": 0, "DOUBLE": 0.0,
}
# The column that marks a stub row in a stubbed table (schema.py).
STUB = "stub"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: KuzuType

    @property
    def arrow(self) -> pa.DataType:
        """The Arrow type apply writes this column with (explicit: inferring it costs ~10x more)."""
        return _ARROW[self.type]

    @property
    def empty(self) -> str | bytes | bool | int | float:
        """The value a stub row holds here."""
        return _EMPTY[self.type]


@dataclass(frozen=True, slots=True)
class NodeTable:
    name: str
    key: str  # the primary key: the first column
    columns: tuple[Column, ...]  # every column, in stored order
    # The column whose shard (torua.hashing.shard_for) is the row's home; None for internal tables.
    owner: str | None = None
    stubbed: bool = False  # holds stub rows (the STUB column) standing for rows of other shards
    internal: bool = False  # Torua's own: graph.query may not name it
    replica_local: bool = False  # apply's own bookkeeping, not written from WAL content: no known keys

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.arrow) for c in self.columns])

    def create(self) -> str:
        cols = ", ".join(f"{c.name} {c.type}" + (" PRIMARY KEY" if c.name == self.key else "")
                         for c in self.columns)
        return f"CREATE NODE TABLE IF NOT EXISTS {self.name}({cols})"


@dataclass(frozen=True, slots=True)
class RelTable:
    name: str
    source: NodeTable
    target: NodeTable
    columns: tuple[Column, ...]  # the properties, in stored order
    # The properties that, with both ends, identify an edge: apply keeps one edge per such key.
    key: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def values(self) -> tuple[Column, ...]:
        """The properties beyond the key: what an upsert of an existing edge overwrites."""
        return tuple(c for c in self.columns if c.name not in self.key)

    def pattern(self, a: str = "a", r: str = "r", b: str = "b") -> str:
        """A Cypher pattern matching every edge of this table, as stored (source to target)."""
        return f"({a}:{self.source.name})-[{r}:{self.name}]->({b}:{self.target.name})"

    def key_items(self, a: str = "a", r: str = "r", b: str = "b") -> list[str]:
        """The RETURN items of an edge's key, in the order of `pattern`'s variables:
        (source key, *key properties, target key)."""
        return [f"{a}.{self.source.key}", *(f"{r}.{c}" for c in self.key), f"{b}.{self.target.key}"]

    def arrow_schema(self) -> pa.Schema:
        """Rows of edges as apply writes them: the ends' keys as `from` and `to`, then the properties."""
        ends = [("from", _key_column(self.source).arrow), ("to", _key_column(self.target).arrow)]
        return pa.schema(ends + [(c.name, c.arrow) for c in self.columns])

    def create(self) -> str:
        props = "".join(f", {c.name} {c.type}" for c in self.columns)
        return f"CREATE REL TABLE IF NOT EXISTS {self.name}(FROM {self.source.name} TO {self.target.name}{props})"


Table = NodeTable | RelTable


def _key_column(table: NodeTable) -> Column:
    return next(c for c in table.columns if c.name == table.key)


def _s(name: str) -> Column:
    return Column(name, "STRING")


ENTITY = NodeTable(
    "Entity", "id",
    (_s("id"), _s("name"), _s("type"), _s("description"), _s("properties"), Column("embedding", "BLOB"),
     Column(STUB, "BOOLEAN")),
    owner="id", stubbed=True,
)
DOCUMENT = NodeTable("Document", "id", (_s("id"), _s("title"), _s("metadata")), owner="id")
CHUNK = NodeTable(
    "Chunk", "id",
    (_s("id"), _s("document_id"), _s("text"), Column("position", "INT64"), Column("embedding", "BLOB"),
     Column(STUB, "BOOLEAN")),
    owner="document_id", stubbed=True,
)
RELATES = RelTable(
    "RELATES", ENTITY, ENTITY,
    (_s("type"), Column("weight", "DOUBLE"), _s("properties"), _s("chunks")),
    key=("type",),
)
MENTIONS = RelTable("MENTIONS", CHUNK, ENTITY, ())
# Placed by torua_node.router.split.kv_shard (a prefixed key), not by a column: no owner.
KV = NodeTable("KV", "key", (_s("key"), _s("value")), internal=True)
META = NodeTable("Meta", "key", (_s("key"), Column("value", "INT64")), internal=True, replica_local=True)
FAILURE = NodeTable("Failure", "seq", (Column("seq", "INT64"), _s("error")), internal=True,
                    replica_local=True)
# Last-writer-wins bookkeeping (shard/apply.py, docs/consistency.md "Convergence"), keyed by
# `entity_version_key` / `relation_version_key`: VERSION holds the version of each stored entity and
# relation (the write whose content is stored), TOMBSTONE the newest delete of each deleted one.
# Content, not replica-local: the same on every replica, so in the digest. Kept apart from the live
# tables, so those and every read path stay as they were; internal, so graph.query cannot name them.
VERSION = NodeTable("Version", "key", (_s("key"), Column("version", "INT64")), internal=True)
TOMBSTONE = NodeTable("Tombstone", "key", (_s("key"), Column("version", "INT64")), internal=True)

# In creation order (a rel table after its ends); digests dump them in this order too.
TABLES: tuple[Table, ...] = (ENTITY, DOCUMENT, CHUNK, RELATES, MENTIONS, KV, META, FAILURE, VERSION, TOMBSTONE)
NODE_TABLES: tuple[NodeTable, ...] = tuple(t for t in TABLES if isinstance(t, NodeTable))
REL_TABLES: tuple[RelTable, ...] = tuple(t for t in TABLES if isinstance(t, RelTable))


def entity_version_key(entity_id: str) -> str:
    """The key of an entity in VERSION and TOMBSTONE."""
    return "e" + entity_id


def relation_version_key(source: str, type_: str, target: str) -> str:
    """The key of a relation in VERSION and TOMBSTONE (lengths make it unambiguous)."""
    return f"r{len(source)}:{source}{len(type_)}:{type_}{target}"


def ddl() -> list[str]:
    """The statements creating every table that does not exist yet."""
    return [t.create() for t in TABLES]
