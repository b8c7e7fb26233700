"""Replica placement: from the current assignment and the live nodes, the next assignment.

Pure and deterministic (no I/O, clock or randomness; ties go to the lower node id, then
the lower shard id; the order of `nodes` does not matter).

The result satisfies, in this order of priority:

1. every shard 0..S-1 is a key; replicas of a shard are on distinct live nodes; no node
   exceeds its capacity;
2. availability first: shard replica counts differ by at most one, none exceeds
   min(R, len(nodes)), and the total is as large as capacity allows;
3. balance (water-filling): a node below its capacity holds at least (max load - 1);
4. minimal moves: among all assignments meeting 1-3, as many current replicas as
   possible are kept, i.e. `added_replicas(current, result)` is minimal.

How: 1-3 fix the total T, the per-shard counts up to which shards get the extra replica,
and the per-node loads up to which flexible nodes get the extra one (`balance_targets`).
Maximising kept replicas under those degree bounds is a min-cost circulation (cost -1
per kept replica). A greedy pass (keep what the targets allow, then fill, rerouting only
newly added replicas where possible) gets a feasible and usually optimal solution fast;
then negative cycles are cancelled until none is left, which proves optimality. Cycles
are searched on a small graph whose vertices are the nodes plus two hubs (SRC: which
shards carry the extra replica, SNK: which nodes carry the extra one); an edge u -> v
means "move some shard from u to v", weighted by the best such shard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Assignment", "NodeSlot", "Targets", "added_replicas", "balance_targets", "place"]

Assignment = dict[int, list[str]]


@dataclass(frozen=True, slots=True)
class NodeSlot:
    id: str
    capacity: int | None = None  # max replicas this node may hold; None = unlimited

    def __post_init__(self) -> None:
        if self.capacity is not None and self.capacity < 0:
            raise ValueError(f"node {self.id!r}: negative capacity {self.capacity}")


@dataclass(frozen=True, slots=True)
class Targets:
    """What rules 1-3 fix. Shards get `shard_min` replicas, `shards_at_max` of them one more.
    Node i gets node_min[i] or node_max[i] (equal unless it is flexible); exactly
    `nodes_at_max` flexible nodes get the larger value. Indexed like `node_ids` (sorted)."""

    total: int
    shard_min: int
    shards_at_max: int
    node_ids: tuple[str, ...]
    node_min: tuple[int, ...]
    node_max: tuple[int, ...]
    nodes_at_max: int


def balance_targets(nodes: Sequence[NodeSlot], num_shards: int, replication_factor: int) -> Targets:
    """Replica counts implied by availability and water-filling balance."""
    if num_shards < 0 or replication_factor < 0:
        raise ValueError("num_shards and replication_factor must be >= 0")
    ordered = sorted(nodes, key=lambda n: n.id)
    ids = tuple(n.id for n in ordered)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate node ids")
    # a node can hold each shard at most once, so S bounds every capacity
    eff = [num_shards if n.capacity is None else min(n.capacity, num_shards) for n in ordered]
    per_shard = min(replication_factor, len(ids))
    total = min(num_shards * per_shard, sum(eff))
    q, rem = divmod(total, num_shards) if num_shards else (0, 0)
    level = _water_level(eff, total)
    low = tuple(min(e, level) for e in eff)
    high = tuple(lo + 1 if e > level else lo for e, lo in zip(eff, low))
    return Targets(total, q, rem, ids, low, high, total - sum(low))


def _water_level(eff: list[int], total: int) -> int:
    """Largest level m with sum(min(e, m)) <= total (binary search; the sum grows with m)."""
    lo, hi = 0, max(eff, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(e, mid) for e in eff) <= total:
            lo = mid
        else:
            hi = mid - 1
    return lo


def added_replicas(old: Mapping[int, Sequence[str]], new: Mapping[int, Sequence[str]]) -> int:
    """(shard, node) pairs in `new` but not in `old`: replicas that have to be copied."""
    return sum(len(set(nodes) - set(old.get(s, ()))) for s, nodes in new.items())


def place(
    current: Mapping[int, Sequence[str]],
    nodes: Sequence[NodeSlot],
    num_shards: int,
    replication_factor: int,
) -> Assignment:
    """The next assignment (see module docstring for the rules it satisfies)."""
    t = balance_targets(nodes, num_shards, replication_factor)
    st = _State(current, t, num_shards)
    st.trim()
    st.fill()
    while st.cancel_one_cycle():
        pass
    return st.result()


class _State:
    """Working assignment. Nodes are indices into the sorted ids; `hold` is per node,
    `on` per shard; `cur`/`cur_on` are the filtered current assignment."""

    def __init__(self, current: Mapping[int, Sequence[str]], t: Targets, num_shards: int) -> None:
        self.t, self.ids, self.S, self.N = t, t.node_ids, num_shards, len(t.node_ids)
        index = {nid: i for i, nid in enumerate(t.node_ids)}
        # filtered current, per shard in its original order (dead nodes, duplicates dropped)
        self.cur_on: list[list[int]] = []
        for s in range(num_shards):
            seen = dict.fromkeys(index[n] for n in current.get(s, ()) if n in index)
            self.cur_on.append(list(seen))
        self.cur: list[set[int]] = [set() for _ in range(self.N)]
        for s, holders in enumerate(self.cur_on):
            for i in holders:
                self.cur[i].add(s)
        self.hold = [set(c) for c in self.cur]
        self.on = [set(h) for h in self.cur_on]
        self.d, self.load = self._choose_degrees()

    def _choose_degrees(self) -> tuple[list[int], list[int]]:
        """Give the extra replica to shards / extra slot to nodes that already hold the most,
        which maximises what can be kept (cycle cancelling fixes any remaining misjudgement)."""
        t = self.t
        d = [t.shard_min] * self.S
        by_held = sorted(range(self.S), key=lambda s: (-min(len(self.on[s]), t.shard_min + 1), s))
        for s in by_held[: t.shards_at_max]:
            d[s] += 1
        load = list(t.node_min)
        flexible = [i for i in range(self.N) if t.node_max[i] > t.node_min[i]]
        flexible.sort(key=lambda i: (-min(len(self.hold[i]), t.node_max[i]), i))
        for i in flexible[: t.nodes_at_max]:
            load[i] += 1
        return d, load

    # -- moves --------------------------------------------------------------------------

    def _add(self, s: int, i: int) -> None:
        self.on[s].add(i)
        self.hold[i].add(s)

    def _remove(self, s: int, i: int) -> None:
        self.on[s].discard(i)
        self.hold[i].discard(s)

    # -- greedy phase -------------------------------------------------------------------

    def trim(self) -> None:
        """Drop current replicas beyond the shard and node targets."""
        for s in range(self.S):
            for _ in range(len(self.on[s]) - self.d[s]):
                # the node furthest over its own target gives it up: one drop serves both
                i = min(self.on[s], key=lambda i: (self.load[i] - len(self.hold[i]), i))
                self._remove(s, i)
        for i in range(self.N):
            extra = len(self.hold[i]) - self.load[i]
            if extra > 0:
                # drop shards missing the fewest replicas, so refills spread over shards
                victims = sorted(self.hold[i], key=lambda s: (self.d[s] - len(self.on[s]), s))
                for s in victims[:extra]:
                    self._remove(s, i)

    def fill(self) -> None:
        """Give each shard its missing replicas on nodes below target, then reroute for the
        few the greedy pass could not place. Preference: re-add a dropped current replica;
        else the node sharing the fewest shards with this shard's holders (so no two nodes
        mirror each other and a failure's re-copies spread out); else the most missing."""
        need = [self.load[i] - len(self.hold[i]) for i in range(self.N)]
        pairs = [[0] * self.N for _ in range(self.N)]  # pairs[i][j]: shards i and j share
        for holders in self.on:
            _count_pairs(pairs, holders)
        for s in range(self.S):
            holders = self.on[s]
            for _ in range(self.d[s] - len(holders)):
                cands = [i for i in range(self.N) if need[i] > 0 and i not in holders]
                if not cands:
                    break
                i = min(
                    cands,
                    key=lambda i: (s not in self.cur[i], sum(pairs[i][j] for j in holders), -need[i], i),
                )
                _count_pairs(pairs, holders, i)
                self._add(s, i)
                need[i] -= 1
        for s in range(self.S):
            while len(self.on[s]) < self.d[s]:
                self._augment(s)

    def _augment(self, s: int) -> None:
        """Place one more replica of `s` via the path of moves that relocates the fewest kept
        replicas (0-1 BFS: moving a newly added replica is free, moving a kept one costs 1)."""
        prev: dict[int, tuple[int, int] | None] = {}  # node -> (node that hands it a shard, shard)
        queue: deque[tuple[int, int, tuple[int, int] | None]] = deque()
        for i in range(self.N):
            if i not in self.on[s]:
                queue.append((0, i, None))
        while queue:
            cost, u, link = queue.popleft()
            if u in prev:
                continue
            prev[u] = link
            if len(self.hold[u]) < self.load[u]:
                return self._apply_path(s, u, prev)
            for v in range(self.N):
                if v in prev or v == u:
                    continue
                shard, w = self._cheapest_move(u, v)
                if shard is None:
                    continue
                item = (cost + w, v, (u, shard))
                queue.appendleft(item) if w == 0 else queue.append(item)
        # unreachable: any per-shard and per-node counts the targets allow are realisable
        raise AssertionError(f"no augmenting path for shard {s}")

    def _cheapest_move(self, u: int, v: int) -> tuple[int | None, int]:
        """A shard u holds and v does not, preferring one u did not hold before."""
        spare = self.hold[u] - self.hold[v]
        added = spare - self.cur[u]
        if added:
            return min(added), 0
        return (min(spare), 1) if spare else (None, 1)

    def _apply_path(self, s: int, end: int, prev: dict[int, tuple[int, int] | None]) -> None:
        """The first node on the path takes `s`, each node hands a shard to the next."""
        moves: list[tuple[int, int, int]] = []
        v = end
        while (link := prev[v]) is not None:
            u, shard = link
            moves.append((shard, u, v))
            v = u
        for shard, u, w in moves:  # path nodes are distinct, so the moves do not interfere
            self._remove(shard, u)
            self._add(shard, w)
        self._add(s, v)

    # -- optimality phase -----------------------------------------------------------------

    def cancel_one_cycle(self) -> bool:
        """Apply one negative-cost cycle of moves if there is one (i.e. if more current
        replicas could be kept); False proves the assignment optimal."""
        edges = self._residual_edges()
        cycle = _negative_cycle(self.N + 2, [(u, v, c) for u, v, c, _ in edges])
        if cycle is None:
            return False
        witness = {(u, v): w for u, v, _, w in edges}
        src, snk = self.N, self.N + 1
        # all witnesses refer to the state before the cycle; apply afterwards
        for u, v in zip(cycle, cycle[1:] + cycle[:1]):
            w = witness[(u, v)]
            if u == snk:
                self.load[v] -= 1
            elif v == snk:
                self.load[u] += 1
            elif u == src:
                self._add(w, v)
                self.d[w] += 1
            elif v == src:
                self._remove(w, u)
                self.d[w] -= 1
            else:
                self._remove(w, u)
                self._add(w, v)
        return True

    def _residual_edges(self) -> list[tuple[int, int, int, int]]:
        """(u, v, cost, witness shard); cost = kept replicas lost - current replicas regained."""
        N, t = self.N, self.t
        added = [self.hold[i] - self.cur[i] for i in range(N)]
        kept = [self.hold[i] & self.cur[i] for i in range(N)]
        dropped = [self.cur[i] - self.hold[i] for i in range(N)]
        edges: list[tuple[int, int, int, int]] = []
        for u in range(N):
            for v in range(N):
                if u != v and (e := _node_move(added[u], kept[u], dropped[v], self.hold[v])):
                    edges.append((u, v, *e))
        src, snk = N, N + 1
        if t.shards_at_max:  # which shards carry the extra replica may change
            low = {s for s in range(self.S) if self.d[s] == t.shard_min}
            for i in range(N):
                if e := _grow_shard(low, dropped[i], self.hold[i]):
                    edges.append((src, i, *e))  # a low shard gains a replica on i
                if e := _node_move(added[i] - low, kept[i] - low, set(), set()):
                    edges.append((i, src, *e))  # a high shard loses its replica on i
        for i in range(N):  # which flexible nodes carry the extra slot may change
            if self.load[i] < t.node_max[i]:
                edges.append((i, snk, 0, -1))
            if self.load[i] > t.node_min[i]:
                edges.append((snk, i, 0, -1))
        return edges

    def result(self) -> Assignment:
        out: Assignment = {}
        for s in range(self.S):
            stay = [i for i in self.cur_on[s] if i in self.on[s]]  # original order kept
            new = sorted(self.on[s].difference(stay))
            out[s] = [self.ids[i] for i in stay + new]
        return out


def _count_pairs(pairs: list[list[int]], holders: set[int], new: int | None = None) -> None:
    """Record that `new` now shares a shard with each of `holders` (without `new`: that all
    of `holders` share one)."""
    if new is None:
        for i in holders:
            for j in holders:
                pairs[i][j] += i != j
    else:
        for j in holders:
            pairs[new][j] += 1
            pairs[j][new] += 1


def _node_move(added: set[int], kept: set[int], regain: set[int], dest: set[int]) -> tuple[int, int] | None:
    """Cheapest shard for u to hand to v, and its cost: u's newly added replicas are free to
    move, its kept ones cost 1; landing on v's dropped current replica (`regain`) earns 1.
    `dest` is what v holds. Lowest shard id on ties."""
    if best := added & regain:
        return -1, min(best)
    if best := (added - dest) | (kept & regain):
        return 0, min(best)
    if best := kept - dest:
        return 1, min(best)
    return None


def _grow_shard(low: set[int], regain: set[int], dest: set[int]) -> tuple[int, int] | None:
    """Cheapest shard (among `low`) to give one more replica on a node holding `dest`."""
    if best := low & regain:
        return -1, min(best)
    if not low <= dest:
        return 0, min(low - dest)
    return None


def _negative_cycle(n: int, edges: list[tuple[int, int, int]]) -> list[int] | None:
    """Bellman-Ford from a virtual source reaching every vertex at cost 0; returns the vertices
    of some negative cycle in edge order, or None."""
    dist, pred = [0] * n, [-1] * n
    last = -1
    for _ in range(n):
        last = -1
        for u, v, c in edges:
            if dist[u] + c < dist[v]:
                dist[v], pred[v], last = dist[u] + c, u, v
        if last == -1:
            return None
    for _ in range(n):  # walk back far enough to be inside the cycle
        last = pred[last]
    cycle, v = [last], pred[last]
    while v != last:
        cycle.append(v)
        v = pred[v]
    cycle.reverse()
    return cycle
