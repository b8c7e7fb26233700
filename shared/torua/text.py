"""The text of an entity: what it is embedded by, and what BM25 indexes it by.

Both are contracts between processes. The router embeds an entity written without a vector
(torua_node.router.split) and the client's ingester embeds entities before writing them
(torua.ingest): they must agree, or one entity would get different vectors depending on who
embedded it. Each shard indexes entities for BM25 (torua_node.storage.textindex), when applying a
write and when rebuilding its index on open: those two must agree too.

The two texts are not the same string, and changing either changes stored vectors or search
results: `entity_embedding_text` separates name and description with ". " and falls back to the id
when the entity has neither; `entity_text` joins them with a space and is empty then. Tokenised
(words only), they give the same terms except for an entity with neither name nor description.
"""

from __future__ import annotations

__all__ = ["entity_text", "entity_embedding_text"]


def entity_text(name: str | None, description: str | None) -> str:
    """The text BM25 indexes an entity by: its name and description."""
    return f"{name or ''} {description or ''}".strip()


def entity_embedding_text(id: str, name: str, description: str) -> str:
    """The text an entity is embedded by when written without a vector: "name. description", or its
    name (its id when it has none) when it has no description."""
    return f"{name}. {description}".strip() if description else (name or id)
