"""Write backpressure: a router refuses writes to a shard whose replicas have fallen too far behind.

A write is acknowledged once JetStream stores it, so a writer can outrun the replicas that apply the
log: without a limit, ingest keeps acknowledging while every strong read waits longer and longer
for the replicas to catch up. The router therefore remembers when it published each entry still
unapplied (replicas announce how far they have applied on `torua.shard.<n>.applied`); once the
oldest such entry of a shard is older than `max_lag` seconds, writes touching that shard get 503
with a retry hint, and `torua ingest` waits and retries instead of failing. Lag is measured in time,
not in entries, because stream sequences are shared by all shards.

Pure: the clock is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from torua.errors import Overloaded

__all__ = ["ApplyLag", "RETRY_AFTER_MS"]

RETRY_AFTER_MS = 500  # the hint given with a refused write: replicas apply thousands of entries in that time


@dataclass(slots=True)
class ApplyLag:
    max_lag: float  # seconds; 0 turns the check off
    _pending: dict[int, deque[tuple[int, float]]] = field(default_factory=dict)  # shard -> (seq, published at)
    _applied: dict[int, int] = field(default_factory=dict)

    def published(self, shard: int, seq: int, now: float) -> None:
        if self.max_lag <= 0 or seq <= self._applied.get(shard, 0):
            return
        self._pending.setdefault(shard, deque()).append((seq, now))

    def applied(self, shard: int, seq: int) -> None:
        """A replica of `shard` has applied up to `seq` (notices may arrive in any order)."""
        if seq <= self._applied.get(shard, 0):
            return
        self._applied[shard] = seq
        pending = self._pending.get(shard)
        while pending and pending[0][0] <= seq:
            pending.popleft()

    def forget(self, shard: int) -> None:
        """The shard's log was reset (rebuilt): positions start again."""
        self._pending.pop(shard, None)
        self._applied.pop(shard, None)

    def lag(self, shard: int, now: float) -> float:
        """Seconds since this router published the oldest entry of `shard` not applied yet."""
        pending = self._pending.get(shard)
        return now - pending[0][1] if pending else 0.0

    def check(self, shards: Iterable[int], now: float) -> None:
        """Raise `Overloaded` if any of `shards` lags more than `max_lag`."""
        if self.max_lag <= 0:
            return
        behind = sorted(s for s in shards if self.lag(s, now) > self.max_lag)
        if behind:
            worst = max(self.lag(s, now) for s in behind)
            raise Overloaded(
                f"replicas of shard {behind[0]} are {worst:.1f}s behind the log (TORUA_MAX_APPLY_LAG"
                f" {self.max_lag:g}s): writes to it wait until they catch up",
                retry_after_ms=RETRY_AFTER_MS,
            )
