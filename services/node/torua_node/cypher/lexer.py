"""The Cypher lexer of `torua.graph.query`: text to tokens and back. Pure: no I/O.

It tokenises the text the way Kuzu's lexer does (strings with backslash escapes, backtick
identifiers with doubled backticks, `//` and `/* */` comments, case-insensitive keywords), so that
the read-only check (`guard.py`) sees every token Kuzu will see; and `render` turns tokens back into
the only text shards ever receive.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torua.errors import BadRequest

__all__ = ["Kind", "Tok", "tokenize", "render"]

Kind = Literal["word", "ident", "string", "number", "param", "op"]


@dataclass(frozen=True, slots=True)
class Tok:
    kind: Kind
    text: str  # verbatim, quotes and backticks included
    pos: int  # offset in the query text
    space: bool  # whitespace or a comment came before it

    @property
    def key(self) -> str:
        """Kuzu compares identifiers and keywords case-insensitively; a backticked name is the same
        name as the bare one."""
        if self.kind == "word":
            return self.text.lower()
        if self.kind == "ident":
            return self.text[1:-1].replace("``", "`").lower()
        return self.text

    def is_op(self, text: str) -> bool:
        return self.kind == "op" and self.text == text

    def is_word(self, *keys: str) -> bool:
        return self.kind == "word" and self.key in keys


_SPACE = " \t\r\n\f\v"
_OPS = frozenset("()[]{},.:;|+-*/%^=<>!~&")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PARAM = re.compile(r"\$[A-Za-z0-9_]+")
_PATTERNS: tuple[tuple[Kind, re.Pattern[str]], ...] = (("param", _PARAM), ("word", _WORD), ("number", _NUMBER))


def tokenize(text: str) -> list[Tok]:
    """Split Cypher into tokens, dropping whitespace and comments. Only ASCII is allowed outside
    strings and backtick identifiers, so no character can be read one way here and another by Kuzu."""
    toks: list[Tok] = []
    i, n, space = 0, len(text), False
    while i < n:
        ch = text[i]
        if ch in _SPACE:
            i, space = i + 1, True
        elif text.startswith("//", i):
            i, space = _line_comment_end(text, i), True
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise BadRequest(f"unterminated /* comment starting at offset {i}")
            i, space = end + 2, True
        else:
            kind, end = _scan(text, i)
            toks.append(Tok(kind, text[i:end], i, space))
            i, space = end, False
    return toks


def _line_comment_end(text: str, i: int) -> int:
    # Ends at the first CR or LF: Kuzu ends it at LF (a lone CR does not close its comment), so the
    # rest of the line is checked here rather than trusted as comment.
    ends = [j for j in (text.find("\n", i), text.find("\r", i)) if j >= 0]
    return min(ends) + 1 if ends else len(text)


def _scan(text: str, i: int) -> tuple[Kind, int]:
    ch = text[i]
    if ch in "'\"":
        return "string", _string_end(text, i)
    if ch == "`":
        return "ident", _backtick_end(text, i)
    for kind, pattern in _PATTERNS:
        m = pattern.match(text, i)
        if m:
            return kind, m.end()
    if ch == "$":
        raise BadRequest(f"bad parameter name at offset {i}: use $name")
    if ch in _OPS:
        return "op", i + 1
    raise BadRequest(f"unexpected character {ch!r} at offset {i} (names with other characters need `backticks`)")


def _string_end(text: str, i: int) -> int:
    quote, j = text[i], i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2  # an escape never ends the string, exactly as in Kuzu's lexer
        elif text[j] == quote:
            return j + 1
        else:
            j += 1
    raise BadRequest(f"unterminated string literal starting at offset {i}")


def _backtick_end(text: str, i: int) -> int:
    j = i + 1
    while True:
        k = text.find("`", j)
        if k < 0:
            raise BadRequest(f"unterminated `identifier` starting at offset {i}")
        if text.startswith("``", k):
            j = k + 2  # a doubled backtick is a backtick inside the name
            continue
        return k + 1


def render(toks: Sequence[Tok]) -> str:
    """Tokens back to text: a single space wherever the user had whitespace or a comment."""
    return "".join((" " if t.space and k else "") + t.text for k, t in enumerate(toks))
