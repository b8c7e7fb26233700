"""Exact cosine top-k over one shard's vectors, in memory, rebuilt from Kuzu on open.

Measured (DESIGN §6): NumPy exact search over 50k x 64 takes ~1 ms, while Kuzu's HNSW index makes
inserts ~100x slower. Rows are stored unit-normalised in a matrix that grows by doubling; removed
rows become tombstones, compacted once they are the majority.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import kuzu
import numpy as np

from torua_node.storage.store import execute

__all__ = ["VectorIndex", "load_indexes", "decode_vectors"]

_MIN_CAPACITY = 1024
_COMPACT_MIN_DEAD = 1024


class VectorIndex:
    def __init__(self, dim: int, capacity: int = _MIN_CAPACITY) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self._m = np.zeros((max(capacity, 1), dim), np.float32)  # unit rows; zero rows stay zero
        self._alive = np.zeros(max(capacity, 1), bool)
        self._ids: list[str | None] = []  # row -> id (None: tombstone)
        self._rows: dict[str, int] = {}
        self._dead = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._rows

    def upsert(self, ids: Sequence[str], matrix: np.ndarray) -> None:
        """Insert or replace vectors; with duplicate ids the last one wins."""
        if len(ids) == 0:
            return
        m = _unit_rows(np.asarray(matrix, np.float32).reshape(len(ids), self.dim))
        last = {id_: k for k, id_ in enumerate(ids)}
        old = [(self._rows[i], k) for i, k in last.items() if i in self._rows]
        new = [(i, k) for i, k in last.items() if i not in self._rows]
        if old:
            rows, src = zip(*old)
            self._m[list(rows)] = m[list(src)]
        if new:
            self._grow(len(self._ids) + len(new))
            start = len(self._ids)
            self._m[start:start + len(new)] = m[[k for _, k in new]]
            self._alive[start:start + len(new)] = True
            for j, (i, _) in enumerate(new):
                self._rows[i] = start + j
            self._ids.extend(i for i, _ in new)

    def remove(self, ids: Sequence[str]) -> None:
        """Forget these ids; unknown ids are ignored."""
        for i in ids:
            row = self._rows.pop(i, None)
            if row is not None:
                self._ids[row] = None
                self._alive[row] = False
                self._dead += 1
        if self._dead >= _COMPACT_MIN_DEAD and self._dead > len(self._rows):
            self._compact()

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k most cosine-similar ids, best first; equal scores ordered by id.

        One matrix-vector product over the contiguous rows, a partition for the k-th score, and only
        the candidates (the k best, and any tied with the k-th) reach Python."""
        n = len(self._ids)
        if k <= 0 or not self._rows:
            return []
        scores = self._m[:n] @ _unit_query(query, self.dim)
        if self._dead:
            scores[~self._alive[:n]] = -np.inf
        k = min(k, len(self._rows))
        if k < n:
            # Keep every row tied with the k-th score so the id tie-break sees all of them.
            kth = np.partition(scores, n - k)[n - k]
            cand = np.flatnonzero(scores >= kth)
        else:
            cand = np.flatnonzero(self._alive[:n])
        # Candidates are live rows, whose ids are never None.
        ids = cast("list[str]", self._ids)
        best = sorted(zip((-scores[cand]).tolist(), [ids[r] for r in cand.tolist()]))[:k]
        return [(id_, -neg) for neg, id_ in best]

    def _grow(self, need: int) -> None:
        cap = self._m.shape[0]
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        m = np.zeros((cap, self.dim), np.float32)
        m[: len(self._ids)] = self._m[: len(self._ids)]
        alive = np.zeros(cap, bool)
        alive[: len(self._ids)] = self._alive[: len(self._ids)]
        self._m, self._alive = m, alive

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive[: len(self._ids)])
        cap = max(_MIN_CAPACITY, 2 * len(keep))
        m = np.zeros((cap, self.dim), np.float32)
        m[: len(keep)] = self._m[keep]
        alive = np.zeros(cap, bool)
        alive[: len(keep)] = True
        kept = [i for i in map(self._ids.__getitem__, keep.tolist()) if i is not None]
        self._ids = [*kept]
        self._rows = {i: r for r, i in enumerate(kept)}
        self._m, self._alive, self._dead = m, alive, 0


def _unit_query(query: np.ndarray, dim: int) -> np.ndarray:
    """One query as `_unit_rows` normalises a row (ValueError if it does not have `dim` values)."""
    q = np.asarray(query, np.float32).reshape(dim)
    q64 = q.astype(np.float64)
    norm = math.sqrt(float(q64 @ q64))  # inf or nan when a value is not finite
    if not (math.isfinite(norm) and norm > 0):
        return np.zeros(dim, np.float32)
    return (q64 / norm).astype(np.float32)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    """Normalise rows; zero or non-finite rows become zero rows (score 0, never NaN)."""
    out = np.zeros_like(m)
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(m.astype(np.float64), axis=1)
        ok = np.isfinite(norms) & (norms > 0) & np.isfinite(m).all(axis=1)
        out[ok] = (m[ok] / norms[ok, None]).astype(np.float32)
    return out


def decode_vectors(blobs: Sequence[bytes | None], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored embeddings (little-endian float32 blobs) as (matrix of the valid ones, validity mask)."""
    size = dim * 4
    ok = np.fromiter((b is not None and len(b) == size for b in blobs), bool, len(blobs))
    flat = np.frombuffer(b"".join(b for b, k in zip(blobs, ok) if k and b is not None), "<f4")
    return flat.astype(np.float32).reshape(-1, dim), ok


def _load(conn: kuzu.Connection, table: str, dim: int) -> VectorIndex:
    t = execute(conn, f"MATCH (n:{table}) WHERE NOT n.stub RETURN n.id, n.embedding").get_as_arrow(0)
    m, ok = decode_vectors(t.column(1).to_pylist(), dim)
    ids = [i for i, k in zip(t.column(0).to_pylist(), ok) if k]
    index = VectorIndex(dim, capacity=max(_MIN_CAPACITY, 2 * len(ids)))
    index.upsert(ids, m)
    return index


def load_indexes(conn: kuzu.Connection, dim: int) -> tuple[VectorIndex, VectorIndex]:
    """(entities, chunks) indexes of every non-stub row, as stored in Kuzu."""
    return _load(conn, "Entity", dim), _load(conn, "Chunk", dim)
