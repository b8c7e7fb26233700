"""Splitting a document into overlapping chunks of at most `max_tokens` tokens.

Tokens are counted as the retriever counts them when it fills a context budget (`approx_tokens`:
about four characters per token, rounded up), so a chunk of 256 tokens costs 256 of the budget.
Chunks break between words, preferably at the end of a sentence or paragraph in the last part of
the window; a single word longer than the limit is cut. Consecutive chunks share the last words of
the previous chunk, up to `overlap` tokens, so a fact stated across a boundary stays whole in one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Chunker", "TextChunk", "TokenChunker", "approx_tokens"]

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?:;][\"')\]]*$")
# Prefer a sentence end found in the last 40% of the window over a plain word break.
_SENTENCE_WINDOW = 0.4


def approx_tokens(text: str) -> int:
    """About four characters per token: the one count, used by the chunker and by the retriever when it fills a context budget."""
    return max(1, (len(text) + 3) // 4)


def _span_tokens(start: int, end: int) -> int:
    return max(1, (end - start + 3) // 4)


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str
    start: int  # character offsets into the document: text == document[start:end]
    end: int


class Chunker(Protocol):
    def split(self, text: str) -> list[TextChunk]: ...


class TokenChunker:
    def __init__(self, max_tokens: int = 256, overlap: int = 32) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= overlap < max_tokens:
            raise ValueError("overlap must be at least 0 and less than max_tokens")
        self.max_tokens = max_tokens
        self.overlap = overlap

    def split(self, text: str) -> list[TextChunk]:
        words = [(m.start(), m.end()) for m in self._pieces(text)]
        chunks: list[TextChunk] = []
        i, last = 0, -1
        while i < len(words):
            j = last = self._last_word(text, words, i, last + 1)
            start, end = words[i][0], words[j][1]
            chunks.append(TextChunk(text[start:end], start, end))
            if j == len(words) - 1:
                break
            i = self._next_start(words, i, j)
        return chunks

    def _pieces(self, text: str) -> list[re.Match[str]]:
        """Words; a word longer than max_tokens is cut into pieces that fit."""
        limit = self.max_tokens * 4
        out: list[re.Match[str]] = []
        for m in _WORD.finditer(text):
            if m.end() - m.start() <= limit:
                out.append(m)
            else:
                out.extend(re.compile(rf"\S{{1,{limit}}}").finditer(text, m.start(), m.end()))
        return out

    def _last_word(self, text: str, words: list[tuple[int, int]], i: int, least: int) -> int:
        """The last word of the chunk starting at word i: as far as fits, preferring a sentence end,
        and at least word `least` (past the previous chunk), so every chunk adds something."""
        start = words[i][0]
        j = i
        while j + 1 < len(words) and _span_tokens(start, words[j + 1][1]) <= self.max_tokens:
            j += 1
        if j == len(words) - 1:
            return j
        floor = words[i][0] + int((words[j][1] - start) * (1 - _SENTENCE_WINDOW))
        for k in range(j, max(i, least - 1), -1):
            if words[k][1] < floor:
                break
            if _SENTENCE_END.search(text[words[k][0] : words[k][1]]) or "\n\n" in text[words[k][1] : words[k + 1][0]]:
                return k
        return j

    def _next_start(self, words: list[tuple[int, int]], i: int, j: int) -> int:
        """The first word of the next chunk: the earliest word after i whose span to j fits the overlap,
        leaving room for the next chunk to reach at least one word further than this one."""
        k = j + 1
        while (
            k - 1 > i
            and _span_tokens(words[k - 1][0], words[j][1]) <= self.overlap
            and _span_tokens(words[k - 1][0], words[j + 1][1]) <= self.max_tokens
        ):
            k -= 1
        return k
