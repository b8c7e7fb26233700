"""Write versions: a hybrid logical clock, one per router process (DESIGN §3, "Convergence").

Every write gets one version from the router that accepts it; every copy it touches (a relation's two
ends, a delete fanned out to every shard) applies last-writer-wins by that version, so the copies end
equal whatever order the shards' logs hold the writes in.

A version is one signed 64-bit integer (it fits Kuzu's INT64), compared as an integer:

    | microseconds since 2025-01-01 UTC (50 bits, until 2060) | counter (3) | router (10) |

- The time part follows the wall clock but never goes backwards: a version is always greater than
  the previous one of the same clock (`now`) and than any version the clock was shown (`observe`).
  When the wall clock stalls or steps back, the counter (and then the time part) is bumped instead.
- The router part is random per clock, so two routers practically never assign the same version
  (a tie would be ordered by log position, which may differ between the two copies).

Between routers, versions are ordered by their wall clocks: a write follows an earlier one made
through another router as long as the two hosts' clocks differ by less than the time between the
two writes (microseconds on one host; keep hosts in NTP sync).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

__all__ = [
    "HybridClock",
    "EPOCH_US",
    "COUNTER_BITS",
    "ROUTER_BITS",
    "MAX_VERSION",
    "version_wall_ms",
    "version_of",
]

EPOCH_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
COUNTER_BITS = 3
ROUTER_BITS = 10
_LOW_BITS = COUNTER_BITS + ROUTER_BITS
_ROUTER_MASK = (1 << ROUTER_BITS) - 1
MAX_VERSION = (1 << 63) - 1


def _wall_us() -> int:
    return time.time_ns() // 1000


def version_of(wall_us: int, counter: int = 0, router: int = 0) -> int:
    """The version of a wall-clock time (µs since the Unix epoch), counter and router id."""
    return (((wall_us - EPOCH_US) << COUNTER_BITS) + counter) << ROUTER_BITS | (router & _ROUTER_MASK)


def version_wall_ms(version: int) -> int:
    """The wall-clock time of a version, in ms since the Unix epoch (clamped at the clock's epoch)."""
    return (max(version >> _LOW_BITS, 0) + EPOCH_US) // 1000


class HybridClock:
    """Hands out strictly increasing versions; thread-safe. `now_us` is the wall clock (µs since
    the Unix epoch), replaceable in tests; `router` the low bits, random unless given."""

    def __init__(self, now_us: Callable[[], int] = _wall_us, router: int | None = None) -> None:
        self._now_us = now_us
        self.router = secrets.randbelow(1 << ROUTER_BITS) if router is None else router & _ROUTER_MASK
        self._logical = 0  # the last version handed out or observed, without its router bits
        self._lock = threading.Lock()

    def now(self) -> int:
        """A version greater than every version this clock handed out or observed."""
        physical = max(self._now_us() - EPOCH_US, 0) << COUNTER_BITS
        with self._lock:
            self._logical = max(self._logical + 1, physical)
            version = self._logical << ROUTER_BITS | self.router
        if version > MAX_VERSION:
            raise OverflowError("write version beyond 64 bits (clock past 2060?)")
        return version

    def observe(self, version: int) -> None:
        """Make every later version greater than `version` (one seen from another router)."""
        with self._lock:
            self._logical = max(self._logical, version >> ROUTER_BITS)
