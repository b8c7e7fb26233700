"""Which shard maps a node follows: never one older than the newest it has seen.

A map is older if its `epoch` (the publishing leader's term) is lower, or its epoch is the same and
its `revision` lower. So a map written by a deposed leader (paused, then resumed), or read back from
KV after a newer one arrived by the watch, is ignored: the node and its router keep the newer one.
Pure; the node calls `admit` for every map it reads (docs/consistency.md#a-fenced-coordinator).
"""

from __future__ import annotations

__all__ = ["MapFence"]


class MapFence:
    def __init__(self) -> None:
        self.epoch = -1
        self.revision = -1

    def admit(self, epoch: int, revision: int) -> bool:
        """Whether a map with this epoch and revision is to be followed (the same one again is: the
        node re-reads the map to retry its reconcile); if so, it becomes the newest seen."""
        if (epoch, revision) < (self.epoch, self.revision):
            return False
        self.epoch, self.revision = epoch, revision
        return True
