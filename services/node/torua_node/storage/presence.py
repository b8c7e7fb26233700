"""Which keys may already exist in a shard table, kept in memory so that apply can skip the lookup.

A `Presence` holds 64-bit hashes of every key ever written (a superset of what exists: deletes and
rolled-back writes leave theirs behind). "Absent" is therefore certain and needs no query; "maybe"
is checked against Kuzu as before. Hashes are Python's own (`hash()`), which are per-process: the
set is rebuilt from the database whenever a process opens it, never stored.

Memory is 8 bytes per key, in one sorted NumPy array: a Python set would cost ~70.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["Presence"]


def _hashes(keys: Sequence[Hashable]) -> np.ndarray:
    return np.fromiter((hash(k) for k in keys), dtype=np.int64, count=len(keys))


class Presence:
    __slots__ = ("_sorted",)

    def __init__(self, keys: Sequence[Hashable] = ()) -> None:
        self._sorted = np.unique(_hashes(keys))

    def __len__(self) -> int:
        return len(self._sorted)

    def maybe(self, keys: Sequence[Hashable]) -> np.ndarray:
        """A bool per key: False means the key was certainly never added."""
        return self._contains(_hashes(keys))

    def add(self, keys: Sequence[Hashable]) -> None:
        h = np.unique(_hashes(keys))
        new = h[~self._contains(h)]
        if len(new):  # a merge of two sorted arrays: linear, where re-sorting everything is not
            self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)

    def _contains(self, h: np.ndarray) -> np.ndarray:
        if len(self._sorted) == 0:
            return np.zeros(len(h), dtype=bool)
        at = np.searchsorted(self._sorted, h).clip(max=len(self._sorted) - 1)
        return self._sorted[at] == h
