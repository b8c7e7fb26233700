"""The default embedder: deterministic hashed word and character n-grams, no model, no network.

Good enough to make `text` queries and ingestion work out of the box, and identical on every
machine, which the write path needs: a missing embedding is computed once by the router and
travels in the log, so every replica stores the same vector.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Protocol

import numpy as np
import xxhash

__all__ = ["INLINE_MAX_CHARS", "Embedder", "HashEmbedder", "embed_soon", "tokenize"]

_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """One float32 row per text, L2-normalised (zero rows for empty text)."""
        ...


# The most text `embed_soon` embeds on the event loop (a question and its words are far less): more
# goes to a thread even for a cheap embedder, so a long search text cannot hold up other requests.
INLINE_MAX_CHARS = 8192


async def embed_soon(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """`embedder.embed(texts)` for a request served on an event loop: on a thread, as a model or an
    HTTP endpoint would stall every other request, unless the embedder says its work is cheap
    (`inline`: hashing or table lookups, loaded) and the texts are short — then here, for the thread
    costs more than the work: it waits for the busy loop to let go of the GIL, 1–2 ms measured
    against 0.03 ms to embed a question with the static table."""
    if getattr(embedder, "inline", False) and sum(map(len, texts)) <= INLINE_MAX_CHARS:
        return embedder.embed(texts)
    return await asyncio.to_thread(embedder.embed, texts)


class HashEmbedder:
    """Feature hashing of words, word bigrams and character trigrams into `dim` signed buckets."""

    inline = True  # cheap enough to run on a request's event loop (`embed_soon`)

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = tokenize(text)
        feats = [(f"w:{w}", 1.0) for w in words]
        feats += [(f"b:{a} {b}", 0.5) for a, b in itertools.pairwise(words)]
        for w in words:
            padded = f"<{w}>"
            feats += [(f"c:{padded[i:i + 3]}", 0.25) for i in range(len(padded) - 2)]
        return feats

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat, weight in self._features(text):
                h = xxhash.xxh64_intdigest(feat.encode())
                out[row, h % self.dim] += weight if (h >> 63) & 1 else -weight
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
