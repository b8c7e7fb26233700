"""The read-only check of `torua.graph.query`. Pure: no I/O.

Security rests on two facts. First, `check_read_only` tokenises the text the way Kuzu's lexer does
(`lexer.py`) and refuses every word that writes or reaches outside the database, wherever it stands,
and every internal table. Second, nothing the user wrote reaches a shard verbatim: the queries sent
to shards are rendered from the validated tokens (`lexer.render`: comments dropped, a space wherever
the user had whitespace or a comment), so Kuzu cannot see a token the check did not see.
"""

from __future__ import annotations

from typing import Any

from torua.errors import BadRequest
from torua_node.cypher.lexer import Tok, tokenize
from torua_node.storage.tables import NODE_TABLES

__all__ = ["check_read_only", "FORBIDDEN", "INTERNAL_TABLES"]

_WRITE = ("CREATE", "MERGE", "SET", "DELETE", "DETACH", "REMOVE", "DROP", "ALTER", "TRUNCATE", "INSERT",
          "FOREACH", "COMMENT")
_OUTSIDE = ("COPY", "LOAD", "INSTALL", "UNINSTALL", "FORCE", "UPDATE", "ATTACH", "EXPORT", "IMPORT", "USE")
_TRANSACTION = ("BEGIN", "COMMIT", "ROLLBACK", "CHECKPOINT")
FORBIDDEN: dict[str, str] = {
    **{w: "graph.query is read-only; change data through torua.graph.upsert / torua.graph.delete"
       for w in _WRITE},
    **{w: "graph.query may not reach outside the database (files, extensions, other databases)"
       for w in _OUTSIDE},
    **{w: "graph.query runs in its own read-only transaction" for w in _TRANSACTION},
    "CALL": "procedures may change the database or read outside it, so no CALL is allowed",
}
# Torua's own tables (KV, Meta, Failure), as Kuzu compares names: case-insensitively.
INTERNAL_TABLES = frozenset(t.name.lower() for t in NODE_TABLES if t.internal)


def check_read_only(text: str, params: dict[str, Any]) -> list[Tok]:
    """Tokens of one read-only statement (a trailing `;` removed), or BadRequest saying why not."""
    toks = tokenize(text)
    if not toks:
        raise BadRequest("cypher is empty")
    for i, t in enumerate(toks):
        if t.kind == "word" and t.text.upper() in FORBIDDEN:
            raise BadRequest(f"{t.text.upper()} is not allowed (offset {t.pos}): {FORBIDDEN[t.text.upper()]}")
        if t.is_op(";") and i != len(toks) - 1:
            raise BadRequest(f"multiple statements are not allowed (';' at offset {t.pos})")
        if t.kind in ("word", "ident") and t.key in INTERNAL_TABLES and i and toks[i - 1].text in (":", "|"):
            raise BadRequest(f"table {t.text} is internal to Torua and cannot be queried")
        if t.kind == "param" and t.text[1:] not in params:
            raise BadRequest(f"parameter {t.text} is used but not given in params")
    return toks[:-1] if toks[-1].is_op(";") else toks
