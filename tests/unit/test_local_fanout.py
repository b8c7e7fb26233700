"""How a router splits a fan-out round: shards served in its process are asked in-process, the others
grouped into one message per node where a node serves several (`NatsShardClient._by_node`); the
subject of those messages is the services' alone (`torua.auth`) and documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_auth_config import allowed
from torua import subjects
from torua.wire import ShardEntry, ShardMap
from torua_node.router.client import NatsShardClient

ROOT = Path(__file__).resolve().parents[2]


class Here:
    """The router's own node: its id and the shards it serves."""

    def __init__(self, node_id: str, serving: set[int]) -> None:
        self.node_id = node_id
        self._serving = serving

    def serving(self, shard: int) -> bool:
        return shard in self._serving

    async def call(self, shard: int, op: Any, request: Any) -> Any:
        return None


def client(placement: dict[int, list[str]], here: Here) -> NatsShardClient:
    smap = ShardMap(revision=1, num_shards=len(placement), replication_factor=1,
                    shards=[ShardEntry(id=s, replicas=n, state="active", active=n) for s, n in placement.items()])
    return NatsShardClient(None, lambda: smap, local=here)  # type: ignore[arg-type]


THREE_NODES = {s: [f"n{s % 3}"] for s in range(8)}  # n0: 0 3 6, n1: 1 4 7, n2: 2 5


def test_a_round_is_grouped_by_the_node_serving_each_shard_not_served_here() -> None:
    c = client(THREE_NODES, Here("n0", {0, 3, 6}))
    assert c._by_node(list(range(8))) == {"n1": [1, 4, 7], "n2": [2, 5]}
    # A node serving one shard of the round gets no message of its own: that shard is its queue group's.
    assert c._by_node([0, 1, 2, 5]) == {"n2": [2, 5]}
    assert c._by_node([1, 2]) == {}
    # A replica here that is not serving: its shard is not grouped (its queue group answers it).
    c = client(THREE_NODES, Here("n0", {0, 3}))
    assert c._by_node(list(range(8))) == {"n1": [1, 4, 7], "n2": [2, 5]}


def test_with_replicas_on_several_nodes_the_fewest_messages_then_in_turn() -> None:
    # Two copies of each shard on the two other nodes: one message covers the whole round.
    placement = {s: ["n1", "n2"] for s in range(4)}
    c = client(placement, Here("n0", set()))
    chosen = [next(iter(c._by_node([0, 1, 2, 3]))) for _ in range(4)]
    assert all(len(c._by_node([0, 1, 2, 3])) == 1 for _ in range(4))
    assert set(chosen) == {"n1", "n2"}  # spread over the replicas, round by round
    # Mixed: n1 serves 0 1 2, n2 serves 2 3 4: two messages, every shard once.
    placement = {0: ["n1"], 1: ["n1"], 2: ["n1", "n2"], 3: ["n2"], 4: ["n2"]}
    groups = client(placement, Here("n0", set()))._by_node(list(range(5)))
    assert sorted(s for shards in groups.values() for s in shards) == [0, 1, 2, 3, 4]
    assert set(groups) == {"n1", "n2"}


def test_without_local_replicas_or_a_map_nothing_is_grouped() -> None:
    smap = ShardMap(revision=1, num_shards=2, replication_factor=1,
                    shards=[ShardEntry(id=s, replicas=["n1"], state="active") for s in range(2)])
    assert NatsShardClient(None, lambda: smap)._by_node([0, 1]) == {}  # type: ignore[arg-type]
    assert NatsShardClient(None, lambda: None, local=Here("n0", set()))._by_node([0, 1]) == {}  # type: ignore[arg-type]
    # A map without `active` (older coordinators): the replicas it names.
    here = Here("n0", set())
    assert NatsShardClient(None, lambda: smap, local=here)._by_node([0, 1]) == {"n1": [0, 1]}  # type: ignore[arg-type]
    # Switched off: every shard of another node is asked of its queue group.
    assert NatsShardClient(None, lambda: smap, local=here, per_node=False)._by_node([0, 1]) == {}  # type: ignore[arg-type]


@pytest.mark.parametrize("node", ["n1", "get", "kv_get", "vector", "applied", "all"])
def test_the_per_node_subject_is_the_services_alone(node: str) -> None:
    subject = subjects.shard_node(node)
    assert allowed("service", subject)
    assert not allowed("client", subject) and not allowed("admin", subject)


def test_the_per_node_subject_is_documented() -> None:
    assert "`torua.shard.node.<id>.batch`" in (ROOT / "docs" / "api.md").read_text()
