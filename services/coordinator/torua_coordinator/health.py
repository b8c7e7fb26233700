"""The cluster's state and its problems, from the shard map and what nodes report of their replicas.

Pure: the leader passes its map and registry. The state is Elasticsearch's (red: a shard has no
active copy; yellow: a shard lacks one), and also red when a replica's log diverged (the log is not
the one it applied: `torua_node/shard/logcheck.py`) or replicas' content digests differ at the same
log position (`torua_node/node/audit.py`): either means answers may silently miss or differ from
acknowledged writes until an operator acts. Each problem is one line naming the shard.
"""

from __future__ import annotations

from collections import Counter

from torua.wire import ClusterState, ReplicaStatus, ShardMap
from torua_coordinator.registry import Registry
from torua_coordinator.shardmap import cluster_state

__all__ = ["Health", "cluster_health", "PROBLEM_KINDS"]

# What a problem is about (the metric's label).
PROBLEM_KINDS = ("log_diverged", "digest_mismatch", "unavailable", "under_replicated", "apply_error")


class Health:
    def __init__(self, state: ClusterState, problems: list[tuple[str, str]]) -> None:
        self.state = state
        self.problems = problems  # (kind, text)

    @property
    def lines(self) -> list[str]:
        return [text for _, text in self.problems]

    def counts(self) -> Counter[str]:
        return Counter(kind for kind, _ in self.problems)


def _reported(smap: ShardMap, registry: Registry) -> dict[int, list[tuple[str, ReplicaStatus]]]:
    """Per shard, what each reachable node hosting it last reported of its replica."""
    out: dict[int, list[tuple[str, ReplicaStatus]]] = {}
    for entry in smap.shards:
        for node in entry.hosts():
            rec = registry.nodes.get(node)
            if rec is None or rec.status not in ("healthy", "draining"):
                continue
            status = rec.replicas.get(entry.id)
            if status is not None:
                out.setdefault(entry.id, []).append((node, status))
    return out


def cluster_health(smap: ShardMap, registry: Registry) -> Health:
    problems: list[tuple[str, str]] = []
    red = False
    reported = _reported(smap, registry)
    for entry in smap.shards:
        s = entry.id
        mismatch: dict[str, str] = {}
        mismatch_seq = 0
        for node, r in reported.get(s, []):
            if r.state == "diverged":
                red = True
                problems.append(("log_diverged", f"shard {s}: replica on {node} stopped serving: {r.error}"))
            elif r.error and r.state != "closing":
                problems.append(("apply_error", f"shard {s}: replica on {node}: {r.error}"))
            if r.digest is not None and not r.digest.match:
                red = True
                mismatch_seq = max(mismatch_seq, r.digest.seq)
                mismatch.update(r.digest.peers)
                mismatch[node] = r.digest.digest
        if mismatch:
            shown = ", ".join(f"{n} {d[:12]}" for n, d in sorted(mismatch.items()))
            problems.append(("digest_mismatch", f"shard {s}: replicas' content differs at log position"
                                                f" {mismatch_seq} ({shown}); rebuild the wrong replica"))
        if not entry.active:
            problems.append(("unavailable", f"shard {s}: no active replica"))
        elif len(entry.active) < smap.replication_factor:
            problems.append(("under_replicated", f"shard {s}: {len(entry.active)} of"
                                                 f" {smap.replication_factor} replicas active"))
    state = cluster_state(smap.shards, smap.replication_factor)
    return Health("red" if red else state, problems)
