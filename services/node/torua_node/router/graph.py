"""Graph reads across shards over a ShardClient: entities by id, 1-hop edges, k-hop traversal.

Used by the data API (`torua.graph.neighbors`) and by retrieval (seed expansion). An entity lives
in the shard of its id and its relations are stored at both ends, so each read goes to the owners
of the ids it asks about; failures follow the fan-out policy (partial, recorded in `status`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torua.model import Consistency, EdgeOut, EntityOut, Tokens
from torua_node.router.client import ShardClient, Status, by_owner, token
from torua_node.shard.protocol import EDGES, ENTITIES, Direction, ShardEdges, ShardEntities

__all__ = ["GraphReads", "Traversal", "EDGES_PER_SHARD"]

EDGES_PER_SHARD = 100_000  # per hop and shard: a frontier's edges are all needed to rank the next one


@dataclass(frozen=True, slots=True)
class Traversal:
    reached: dict[str, int]  # id -> hops from the start ids (0 for those)
    edges: list[EdgeOut]  # only between reached ids, ordered by (source, type, target)


class GraphReads:
    def __init__(self, client: ShardClient) -> None:
        self.client = client

    async def entities(
        self, ids: list[str], after: Tokens, status: Status, *, consistency: Consistency = "strong"
    ) -> list[EntityOut]:
        """The entities among `ids` that exist (stubs are never returned), asked of their owners."""
        groups = by_owner(self.client, ids)
        requests = {
            s: ShardEntities(ids=g, after=token(after, s), consistency=consistency) for s, g in groups.items()
        }
        replies = await self.client.fan_out(ENTITIES, requests, status)
        return [e for r in replies.values() for e in r.entities]

    async def edges(
        self,
        ids: list[str],
        direction: Direction,
        types: list[str] | None,
        after: Tokens,
        status: Status,
        *,
        consistency: Consistency = "strong",
    ) -> list[EdgeOut]:
        """Relations of `ids` in `direction` (one local lookup on each id's owner: relations are
        stored at both ends)."""
        groups = by_owner(self.client, ids)
        requests = {
            s: ShardEdges(
                ids=g, direction=direction, types=types, limit=EDGES_PER_SHARD, after=token(after, s),
                consistency=consistency,
            )
            for s, g in groups.items()
        }
        replies = await self.client.fan_out(EDGES, requests, status)
        return [e for r in replies.values() for e in r.edges]

    async def traverse(
        self,
        ids: list[str],
        hops: int,
        direction: Direction,
        types: list[str] | None,
        limit: int,
        after: Tokens,
        status: Status,
        *,
        consistency: Consistency = "strong",
    ) -> Traversal:
        """Breadth-first frontier exchange: each hop asks the frontier's owning shards for their edges.

        Reaches at most `limit` ids (the start ids first, then nearest first, then by id) and keeps
        the edges between reached ids, ordered by (source, type, target).
        """
        reached: dict[str, int] = dict.fromkeys(ids, 0)
        edges: dict[tuple[str, str, str], EdgeOut] = {}
        frontier = list(reached)
        for hop in range(1, hops + 1):
            if not frontier or len(reached) >= limit:
                break
            found = await self.edges(frontier, direction, types, after, status, consistency=consistency)
            in_frontier = set(frontier)
            new: set[str] = set()
            for e in found:
                edges[(e.source, e.type, e.target)] = e
                new.update(f for f in _far_ends(e, in_frontier, direction) if f not in reached)
            frontier = sorted(new)[: limit - len(reached)]
            reached.update(dict.fromkeys(frontier, hop))
        kept = [e for _, e in sorted(edges.items()) if e.source in reached and e.target in reached]
        return Traversal(reached, kept)


def _far_ends(e: EdgeOut, frontier: set[str], direction: Direction) -> list[str]:
    """The ends of `e` one hop from the frontier in `direction`."""
    out = []
    if direction in ("out", "both") and e.source in frontier:
        out.append(e.target)
    if direction in ("in", "both") and e.target in frontier:
        out.append(e.source)
    return out
