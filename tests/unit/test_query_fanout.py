"""`run_query` under the one fan-out policy, with a fake `run_on_shard` (no Kuzu, no NATS): which
shard failures make the answer partial, which are raised, and that a failed shard is not asked
again. test_query.py covers the merging itself on real Kuzu."""

from __future__ import annotations

from typing import Any

import pytest

from torua.errors import BadRequest, InternalError, NotFound, PayloadTooLarge, ToruaError, Unavailable
from torua_node.cypher.merge import ShardRows
from torua_node.router.query import run_query

SHARDS = 4


class FakeRun:
    """Shard s holds entities e{s}0 and e{s}1; `fail[s]` is raised instead (`fail_on` picks a round)."""

    def __init__(self) -> None:
        self.fail: dict[int, BaseException] = {}
        self.calls: list[tuple[int, str]] = []

    async def __call__(self, shard: int, query: str, params: dict[str, Any]) -> ShardRows:
        self.calls.append((shard, query))
        if shard in self.fail:
            raise self.fail[shard]
        ids = [f"e{shard}0", f"e{shard}1"]
        if "count(*)" in query:
            return ShardRows(columns=["c"], types=["INT64"], rows=[[len(ids)]])
        if "__qowner" in query:  # the stub probe of a relationship plan: no stubs here
            return ShardRows(columns=["__qid", "__qowner"], types=["STRING", "STRING"], rows=[])
        if "RELATES" in query:  # a -> b with both ends real on this shard
            rows = [[f"name {ids[0]}", ids[1], ids[0], "knows", ids[1], 1.0, "{}", []]]
            cols = ["a.name", "b.id", "__qt0", "__qt1", "__qt2", "__qt3", "__qt4", "__qt5"]
            return ShardRows(columns=cols, types=["STRING"] * 5 + ["DOUBLE", "STRING", "STRING[]"], rows=rows)
        return ShardRows(columns=["n.id", "__qt0"], types=["STRING", "STRING"], rows=[[i, i] for i in ids])


ALL_IDS = [f"e{s}{i}" for s in range(SHARDS) for i in range(2)]
BY_ID = "MATCH (n:Entity) RETURN n.id ORDER BY n.id"


async def test_every_shard_answering_gives_the_merged_answer() -> None:
    got = await run_query(BY_ID, {}, SHARDS, FakeRun())
    assert got.rows == [[i] for i in ALL_IDS] and got.columns == ["n.id"]
    assert not got.partial and all(st.ok for st in got.shards.values()) and len(got.shards) == SHARDS


@pytest.mark.parametrize(
    "failure",
    [Unavailable("no replica of shard 2 answered (TimeoutError)"), InternalError("internal error (KeyError)"),
     TimeoutError("deadline"), RuntimeError("connection closed")],
    ids=["503", "500", "timeout", "unexpected"],
)
async def test_a_shard_that_cannot_answer_makes_the_answer_partial(failure: Exception) -> None:
    run = FakeRun()
    run.fail[2] = failure
    got = await run_query(BY_ID, {}, SHARDS, run)
    assert got.partial and got.rows == [[i] for i in ALL_IDS if not i.startswith("e2")]
    assert got.shards["2"].ok is False
    expected = failure.description if isinstance(failure, ToruaError) else f"{type(failure).__name__}: {failure}"
    assert got.shards["2"].error == expected
    count = await run_query("MATCH (n:Entity) RETURN count(*) AS c", {}, SHARDS, run)
    assert count.partial and count.rows == [[6]]


@pytest.mark.parametrize(
    "failure", [BadRequest("query failed: Binder exception"), NotFound("gone"), PayloadTooLarge("reply too large")],
    ids=["400", "404", "413"],
)
async def test_a_client_error_is_raised(failure: ToruaError) -> None:
    run = FakeRun()
    run.fail[1] = failure
    with pytest.raises(type(failure)) as err:
        await run_query(BY_ID, {}, SHARDS, run)
    assert err.value is failure


async def test_a_shard_failing_in_the_probe_round_is_not_asked_again() -> None:
    run = FakeRun()
    run.fail[3] = Unavailable("down")
    got = await run_query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, b.id", {}, SHARDS, run)
    assert got.partial and not got.shards["3"].ok
    assert [s for s, _ in run.calls].count(3) == 1
    assert sorted(s for s, q in run.calls if "__qowner" not in q) == [0, 1, 2]
    assert got.rows == [[f"name e{s}0", f"e{s}1"] for s in range(3)]
