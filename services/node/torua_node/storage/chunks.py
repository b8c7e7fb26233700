"""What a shard answers about chunks: chunk rows, and which chunks mention which entities (read from
memory: `chunkview.py`)."""

from __future__ import annotations

from torua.wire import Reply

__all__ = ["ChunkOut", "Mention"]


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
