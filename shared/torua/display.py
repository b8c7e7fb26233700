"""Readable tables for the command line."""

from __future__ import annotations

import time
from collections.abc import Sequence

from torua.wire import ClusterInfo, NodesReply, ShardMap

__all__ = ["table", "status_text"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ago(ts: float | None) -> str:
    return "-" if ts is None else f"{max(time.time() - ts, 0):.1f}s ago"


def status_text(info: ClusterInfo, nodes: NodesReply, shards: ShardMap) -> str:
    sc = info.shards
    head = (
        f"cluster {info.cluster_id}  state {info.state.upper()}  nodes {info.nodes.healthy}/{info.nodes.total} healthy"
        f"  shards {sc.total} x R{sc.replication_factor}: {sc.active} active, {sc.initializing} initializing,"
        f" {sc.unassigned} unassigned  map r{info.map_revision}"
    )
    node_rows = [
        (n.id, n.status, len(n.shards), n.capacity, ",".join(map(str, n.shards)), _ago(n.last_heartbeat), n.version)
        for n in nodes.nodes
    ]
    shard_rows = [
        (s.id, s.state, ",".join(s.replicas), ",".join(s.active), ",".join(s.leaving)) for s in shards.shards
    ]
    return "\n\n".join(
        [
            head,
            table(["NODE", "STATUS", "REPLICAS", "CAPACITY", "SHARDS", "HEARTBEAT", "VERSION"], node_rows),
            table(["SHARD", "STATE", "REPLICAS", "ACTIVE", "LEAVING"], shard_rows),
        ]
    )
