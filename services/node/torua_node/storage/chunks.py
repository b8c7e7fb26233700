"""Chunk reads of one shard replica: chunk rows, and which chunks mention which entities."""

from __future__ import annotations

import kuzu

from torua.wire import Reply
from torua_node.storage.keyspace import table_size
from torua_node.storage.statements import id_rows, run

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
    cols = run(conn, "MATCH (c:Chunk {id: u_id}) WHERE NOT c.stub OPTIONAL MATCH (c)-[:MENTIONS]->(e:Entity)"
                     " RETURN c.id, c.document_id, c.text, c.position, collect(e.id)",
               id_rows(ids), table_size(conn, "Chunk"))
    return sorted(
        (ChunkOut(id=i, document_id=d, text=t or "", position=p or 0,
                  entities=sorted(e for e in (es or []) if e is not None))
         for i, d, t, p, es in zip(*cols)),
        key=lambda c: c.id,
    )


def mentions_of(conn: kuzu.Connection, entity_ids: list[str], limit: int) -> list[Mention]:
    """Chunks mentioning any of `entity_ids` (local copies of mentions make this one lookup), ordered
    by (entity, chunk), at most `limit`."""
    if not entity_ids or limit <= 0:
        return []
    cols = run(conn, "MATCH (c:Chunk)-[:MENTIONS]->(e:Entity {id: u_id})"
                     " RETURN c.id, c.document_id, e.id ORDER BY e.id, c.id LIMIT $n",
               id_rows(entity_ids), table_size(conn, "Entity"), {"n": limit})
    # Row by row, each id brings its own first `limit`: merge them.
    rows = sorted(zip(*cols), key=lambda r: (r[2], r[0]))[:limit]
    return [Mention(chunk_id=c, document_id=d, entity_id=e) for c, d, e in rows]
