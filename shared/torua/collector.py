"""The cyclic garbage collector, set for a process that holds a large heap for its whole life.

A node keeps its shards' indexes in memory (graph view, chunk view, text and vector indexes): a few
million container objects that live as long as the replica. With CPython's defaults a node under
read load ran four or five young collections per retrieval (the threshold, 700 net new objects, is
passed by decoding one reply of a few hundred relations) and, every few seconds, a
full collection that walked the whole heap: ~50 ms with the event loop stopped at 50,000 entities
and 250,000 relations, and growing with the data. Measured with `bench.query`'s data (3 nodes x 8
shards, sequential retrievals): 2.4–3.1 ms of collector time per retrieval across the nodes,
1.4–1.9 ms of it in full collections; with `tune()`, under 0.1 ms.

`tune()` does two things:

- raises the young generation's threshold (`YOUNG_THRESHOLD`): a request's temporaries are freed
  by reference counting when it ends, so the collector, which only looks for cycles, need not run
  while they are alive;
- freezes what survives each full collection (`gc.freeze`): the next one walks only what was
  allocated since. Objects frozen cannot be found to be garbage, so every `THAW_EVERY`-th full
  collection thaws them instead, and the one after it walks the whole heap (once in so many); and
  `release()` thaws at once when a large part of the frozen heap has just been let go (a replica
  closed or discarded).
"""

from __future__ import annotations

import gc
from typing import Any

__all__ = ["THAW_EVERY", "YOUNG_THRESHOLD", "release", "tune"]

YOUNG_THRESHOLD = 20_000
"""Net new container objects between young collections (CPython's default: 700)."""

THAW_EVERY = 16
"""Every this many full collections, the frozen heap is walked too."""


class _Freezer:
    """The `gc.callbacks` entry: after each full collection, freeze its survivors, or, when a whole
    walk is due, thaw everything so the next full collection walks it all."""

    __slots__ = ("fulls", "thaw_every")

    def __init__(self, thaw_every: int) -> None:
        self.fulls = 0
        self.thaw_every = thaw_every

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        self.fulls += 1
        if self.fulls % self.thaw_every == 0:
            gc.unfreeze()
        else:
            gc.freeze()


def tune(*, young: int = YOUNG_THRESHOLD, thaw_every: int = THAW_EVERY) -> None:
    """Set this process's collector as the module says; once, at a service's start (again: no-op
    but for the thresholds)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
    if not any(isinstance(cb, _Freezer) for cb in gc.callbacks):
        gc.callbacks.append(_Freezer(thaw_every))


def release() -> None:
    """Much of the frozen heap may have just become garbage (a replica was closed): thaw it, so the
    next full collection can free what of it is caught in cycles."""
    gc.unfreeze()
