"""From a placement target and what nodes report, the shard map to publish and the cluster state.

Moves are make-before-break: a replica that placement moved away keeps serving (listed in
`leaving`) until every new replica of its shard reports active.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torua.wire import ClusterState, DrainShard, ShardCounts, ShardEntry, ShardMap

__all__ = ["next_entries", "cluster_state", "replica_counts", "assignments_by_node", "same_layout", "drain_progress"]

# serving(node_id) -> shards whose replica on that node is active and reachable
Serving = Callable[[str], set[int]]


def _shard_state(entry: ShardEntry, replication_factor: int, reachable: set[str]) -> str:
    if not entry.replicas and not entry.leaving:
        return "unassigned"
    n_active = len(entry.active)
    pending = [n for n in entry.replicas if n not in entry.active and n in reachable]
    if n_active == 0:
        return "initializing" if pending else "unavailable"
    if pending:
        return "initializing"
    return "active" if n_active >= replication_factor else "degraded"


def next_entries(
    previous: Sequence[ShardEntry],
    target: Mapping[int, list[str]],
    serving: Serving,
    reachable: set[str],
    replication_factor: int,
) -> list[ShardEntry]:
    prev_by_id = {e.id: e for e in previous}
    entries = []
    for shard in sorted(target):
        replicas = list(target[shard])
        prev = prev_by_id.get(shard)
        if not replicas and prev is not None:
            # No node can take it (the whole cluster is down or leaving): remember the last
            # holders, so the shard comes back where its data is rather than being forgotten.
            replicas = list(prev.replicas)
        old = [n for n in (prev.hosts() if prev else []) if n not in replicas]
        all_new_active = all(shard in serving(n) for n in replicas)
        # Keep an old replica only while it can still serve and the new ones are not all ready.
        leaving = [] if all_new_active else [n for n in old if n in reachable and shard in serving(n)]
        entry = ShardEntry(id=shard, replicas=replicas, leaving=leaving)
        entry.active = [n for n in entry.hosts() if shard in serving(n)]
        entry.state = _shard_state(entry, replication_factor, reachable)
        entries.append(entry)
    return entries


def cluster_state(entries: Sequence[ShardEntry], replication_factor: int) -> ClusterState:
    """Elasticsearch's meaning: red if some shard has no active copy, yellow if some lacks one."""
    if any(not e.active for e in entries):
        return "red"
    if any(len(e.active) < replication_factor for e in entries):
        return "yellow"
    return "green"


def replica_counts(entries: Sequence[ShardEntry], replication_factor: int) -> ShardCounts:
    active = sum(len([n for n in e.replicas if n in e.active]) for e in entries)
    initializing = sum(len([n for n in e.replicas if n not in e.active]) for e in entries)
    wanted = len(entries) * replication_factor
    return ShardCounts(
        total=len(entries),
        replication_factor=replication_factor,
        active=active,
        initializing=initializing,
        unassigned=max(wanted - active - initializing, 0),
    )


def assignments_by_node(entries: Sequence[ShardEntry]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in entries:
        for n in e.hosts():
            out.setdefault(n, []).append(e.id)
    return out


def same_layout(a: ShardMap, b: ShardMap) -> bool:
    """Equal apart from revision and timestamp: nothing worth a new KV write."""
    return (a.num_shards, a.replication_factor, a.shards, a.embedding_dim) == (
        b.num_shards,
        b.replication_factor,
        b.shards,
        b.embedding_dim,
    )


def drain_progress(node: str, published: Sequence[ShardEntry], planned: Sequence[ShardEntry]) -> list[DrainShard]:
    """What is left of draining `node`: each shard it still hosts in the published map, judged by the
    map placement computes now (`planned`): moved away (its new copies, not yet serving, in `to`),
    or blocked because no other node can take it."""
    planned_by_id = {e.id: e for e in planned}
    out = []
    for entry in published:
        if node not in entry.hosts():
            continue
        plan = planned_by_id.get(entry.id, entry)
        if node in plan.replicas:
            out.append(DrainShard(shard=entry.id, state="blocked"))
        else:
            out.append(DrainShard(shard=entry.id, state="moving", to=[n for n in plan.replicas if n not in plan.active]))
    return out
