"""Chunk reads of one shard replica: chunk rows, and which chunks mention which entities."""

from __future__ import annotations


import kuzu

from torua.wire import Reply

__all__ = ["ChunkOut", "Mention", "chunks_by_ids", "mentions_of"]


class ChunkOut(Reply):
    id: str
    document_id: str
    text: str
    position: int
    entities: list[str]


class Mention(Reply, array_like=True):
    chunk_id: str
    document_id: str
    entity_id: str


def chunks_by_ids(conn: kuzu.Connection, ids: list[str]) -> list[ChunkOut]:
    """The real chunks among `ids` (stubs are skipped), with the entities each mentions."""
    if not ids:
        return []
    rows = conn.execute(
        "MATCH (c:Chunk) WHERE c.id IN $ids AND NOT c.stub "
        "OPTIONAL MATCH (c)-[:MENTIONS]->(e:Entity) "
        "RETURN c.id, c.document_id, c.text, c.position, collect(e.id)",
        {"ids": list(dict.fromkeys(ids))},
    ).get_all()
    return sorted(
        (ChunkOut(id=r[0], document_id=r[1], text=r[2] or "", position=r[3] or 0, entities=sorted(e for e in (r[4] or []) if e is not None)) for r in rows),
        key=lambda c: c.id,
    )


def mentions_of(conn: kuzu.Connection, entity_ids: list[str], limit: int) -> list[Mention]:
    """Chunks mentioning any of `entity_ids` (local copies of mentions make this one lookup)."""
    if not entity_ids:
        return []
    rows = conn.execute(
        "MATCH (c:Chunk)-[:MENTIONS]->(e:Entity) WHERE e.id IN $ids "
        "RETURN c.id, c.document_id, e.id ORDER BY e.id, c.id LIMIT $n",
        {"ids": list(dict.fromkeys(entity_ids)), "n": limit},
    ).get_all()
    return [Mention(chunk_id=r[0], document_id=r[1], entity_id=r[2]) for r in rows]
