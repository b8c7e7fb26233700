"""A router's cache of fan-out results, never older than what the request must see.

An entry remembers, for every shard it read, that shard's applied sequence at the time. It is used
only if, for each of those shards, that sequence is at least the request's write token (`after`)
and at least the newest sequence this router knows of: replicas announce each applied batch on
`torua.shard.<n>.applied`, and the router's own writes count at once. So read-your-writes holds
exactly, and without tokens a result is at most one notification behind the log.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["ResultCache"]


@dataclass(slots=True)
class _Entry:
    reply: object
    seqs: dict[int, int]
    expires: float


class ResultCache:
    def __init__(self, max_entries: int = 1024, ttl: float = 60.0) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.latest: dict[int, int] = {}
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def note(self, shard: int, seq: int) -> None:
        """A shard's log has reached `seq` (applied somewhere, or written by this router)."""
        if seq > self.latest.get(shard, 0):
            self.latest[shard] = seq

    def forget(self, shard: int) -> None:
        """A replica of `shard` was rebuilt from the log, which may be another log than the one
        these positions count in (re-created): drop what is known of the shard."""
        self.latest.pop(shard, None)
        for key in [k for k, e in self._entries.items() if shard in e.seqs]:
            del self._entries[key]

    def get(self, key: bytes, after: dict[str, int], now: float | None = None) -> object | None:
        entry = self._entries.get(key)
        if entry is None or not self._fresh(entry, after, time.monotonic() if now is None else now):
            self.misses += 1
            if entry is not None:
                del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.reply

    def _fresh(self, entry: _Entry, after: dict[str, int], now: float) -> bool:
        if now > entry.expires:
            return False
        if any(int(seq) > entry.seqs.get(int(s), -1) for s, seq in after.items() if int(seq) > 0):
            return False  # the request must see a write this entry may not include
        return all(seq >= self.latest.get(shard, 0) for shard, seq in entry.seqs.items())

    def put(self, key: bytes, reply: object, seqs: dict[int, int], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._entries[key] = _Entry(reply, dict(seqs), now + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
