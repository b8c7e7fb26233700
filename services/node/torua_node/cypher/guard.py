"""The read-only check of `torua.graph.query`. Pure: no I/O.

Security rests on two facts. First, `check_read_only` tokenises the text the way Kuzu's lexer does
(`lexer.py`) and refuses every word that writes or reaches outside the database, wherever it stands,
and every internal table. Second, nothing the user wrote reaches a shard verbatim: the queries sent
to shards are rendered from the validated tokens (`lexer.render`: comments dropped, a space wherever
the user had whitespace or a comment), so Kuzu cannot see a token the check did not see.
"""

from __future__ import annotations

from typing import Any

from torua.errors import BadRequest, ResourceLimit
from torua_node.cypher.lexer import Tok, tokenize
from torua_node.storage.tables import NODE_TABLES

__all__ = ["check_read_only", "check_value_sizes", "FORBIDDEN", "INTERNAL_TABLES", "VALUE_BUILDERS"]

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


# Functions whose result can be far larger than their arguments, and what their size depends on.
# Kuzu evaluates expressions a batch of rows at a time (2048), so one call of `lpad(x, 10**8, 'y')`
# in a RETURN is that many times its own size: such a query is refused before it runs when its
# arguments are constants (literals, parameters, arithmetic of them). Sizes computed from data are
# caught at run time by the shard query worker's memory limit (docs/queries.md, "Limits").
VALUE_BUILDERS = frozenset({"lpad", "rpad", "repeat", "range", "generate_series", "list_fill"})


def check_value_sizes(toks: list[Tok], params: dict[str, Any], max_value: int) -> None:
    """ResourceLimit (413) if a call of a VALUE_BUILDERS function, with constant arguments, builds a
    value of more than `max_value` characters or elements."""
    for i, t in enumerate(toks):
        if t.kind != "word" or t.key not in VALUE_BUILDERS or i + 1 >= len(toks) or not toks[i + 1].is_op("("):
            continue
        if i and toks[i - 1].is_op("."):
            continue  # a property named like a function
        args = _call_args(toks, i + 1)
        size = _built_size(t.key, [_constant(a, params) for a in args], [_string_len(a, params) for a in args])
        if size is not None and size > max_value:
            raise ResourceLimit(
                f"{t.text}(...) at offset {t.pos} builds a value of {size} characters or elements; the limit is "
                f"{max_value} (TORUA_QUERY_MAX_VALUE)", limit=max_value, setting="TORUA_QUERY_MAX_VALUE")


def _call_args(toks: list[Tok], open_at: int) -> list[list[Tok]]:
    """The top-level arguments of the call whose `(` is at `open_at` (empty lists for none)."""
    args: list[list[Tok]] = [[]]
    depth = 0
    for t in toks[open_at + 1:]:
        if t.kind == "op" and t.text in "([{":
            depth += 1
        elif t.kind == "op" and t.text in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif t.is_op(",") and depth == 0:
            args.append([])
            continue
        args[-1].append(t)
    return args if args != [[]] else []


def _built_size(name: str, ints: list[int | None], strs: list[int | None]) -> int | None:
    if name in ("lpad", "rpad"):
        return ints[1] if len(ints) >= 2 else None
    if name == "repeat":
        if len(ints) < 2 or ints[1] is None:
            return None
        return ints[1] * max(strs[0] if strs[0] is not None else 1, 1)
    if name == "list_fill":
        return ints[1] if len(ints) >= 2 else None
    if name in ("range", "generate_series") and len(ints) in (2, 3):
        start, stop = ints[0], ints[1]
        step = ints[2] if len(ints) == 3 else 1
        if start is None or stop is None or step is None or step == 0:
            return None
        return max((stop - start) // step + 1, 0)
    return None


def _string_len(arg: list[Tok], params: dict[str, Any]) -> int | None:
    if len(arg) == 1 and arg[0].kind == "string":
        return len(arg[0].text) - 2
    if len(arg) == 1 and arg[0].kind == "param" and isinstance(params.get(arg[0].text[1:]), str):
        return len(params[arg[0].text[1:]])
    return None


def _constant(arg: list[Tok], params: dict[str, Any]) -> int | None:
    """The integer value of an argument made of integer literals, integer parameters, parentheses and
    + - * (unary minus too); None for anything else."""
    pos = 0

    def expr() -> int | None:
        nonlocal pos
        value = term()
        while value is not None and pos < len(arg) and arg[pos].kind == "op" and arg[pos].text in "+-":
            op = arg[pos].text
            pos += 1
            rhs = term()
            if rhs is None:
                return None
            value = value + rhs if op == "+" else value - rhs
        return value

    def term() -> int | None:
        nonlocal pos
        value = unary()
        while value is not None and pos < len(arg) and arg[pos].is_op("*"):
            pos += 1
            rhs = unary()
            if rhs is None:
                return None
            value *= rhs
            if abs(value) > 1 << 62:  # no need to be exact past any limit
                value = (1 << 62) if value > 0 else -(1 << 62)
        return value

    def unary() -> int | None:
        nonlocal pos
        if pos >= len(arg):
            return None
        t = arg[pos]
        if t.is_op("-"):
            pos += 1
            v = unary()
            return None if v is None else -v
        if t.is_op("("):
            pos += 1
            v = expr()
            if v is None or pos >= len(arg) or not arg[pos].is_op(")"):
                return None
            pos += 1
            return v
        pos += 1
        if t.kind == "number" and t.text.isdigit():
            return int(t.text)
        if t.kind == "param":
            v = params.get(t.text[1:])
            return v if isinstance(v, int) and not isinstance(v, bool) else None
        return None

    value = expr()
    return value if pos == len(arg) else None
