"""Stable placement of ids on shards: the same id maps to the same shard in every process, forever."""

from __future__ import annotations

import xxhash

__all__ = ["stable_hash", "shard_for"]


def stable_hash(key: str) -> int:
    """A 64-bit hash that never changes between runs or machines (unlike Python's `hash()`)."""
    return xxhash.xxh64_intdigest(key.encode("utf-8"))


def shard_for(key: str, num_shards: int) -> int:
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    return stable_hash(key) % num_shards
