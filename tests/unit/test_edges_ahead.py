"""Relations asked ahead of their hop on a guess of its frontier (rag/retrieve.py `_EdgesAhead`): a
frontier among the guessed entities needs no round of its own, one partly among them asks only for
the rest, and an entity whose shard failed that round is asked again (its failure is not the reply's)."""

from __future__ import annotations

import asyncio

from torua.model import EdgeOut, ShardStatus
from torua_node.rag.retrieve import _EdgesAhead
from torua_node.router.fanout import Status

EDGES = [EdgeOut(source="a", target="b", type="R", weight=1.0), EdgeOut(source="b", target="c", type="R", weight=1.0),
         EdgeOut(source="c", target="d", type="R", weight=1.0), EdgeOut(source="x", target="y", type="R", weight=1.0)]


def owner(entity: str) -> int:
    return 0 if entity in "ab" else 1


def fetcher(failed: set[int], calls: list[list[str]]):  # type: ignore[no-untyped-def]
    async def fetch(ids: list[str], status: Status) -> list[EdgeOut]:
        calls.append(ids)
        for shard in {owner(i) for i in ids}:
            status[str(shard)] = ShardStatus(ok=shard not in failed, applied_seq=5 + shard, error=None)
        return [e for e in EDGES if (e.source in ids and owner(e.source) not in failed)
                or (e.target in ids and owner(e.target) not in failed)]
    return fetch


async def test_a_frontier_among_the_guessed_entities_is_answered_from_their_round() -> None:
    ahead, calls, status = _EdgesAhead(), [], {}  # type: ignore[var-annotated]
    ahead.ask(["a", "b", "c"], fetcher(set(), calls))
    known, rest = await ahead.split(["b", "c"], owner, status)
    assert rest == [] and len(calls) == 1
    # Every relation of b and of c, each once per end asked (the caller keys them), nothing of a's alone.
    assert {(e.source, e.target) for e in known} == {("a", "b"), ("b", "c"), ("c", "d")}
    assert set(status) == {"0", "1"} and status["0"].applied_seq == 5  # the shards read count as answered


async def test_only_the_entities_the_guess_missed_are_left_to_ask() -> None:
    ahead, calls, status = _EdgesAhead(), [], {}  # type: ignore[var-annotated]
    ahead.ask(["a"], fetcher(set(), calls))
    known, rest = await ahead.split(["a", "x"], owner, status)
    assert rest == ["x"] and {(e.source, e.target) for e in known} == {("a", "b")}
    ahead.ask(["a", "x"], fetcher(set(), calls))  # `a` is known: not asked again
    await asyncio.sleep(0)  # the round starts
    assert calls == [["a"], ["x"]]
    ahead.cancel()


async def test_a_failed_shards_entities_are_asked_again_and_do_not_fail_the_reply() -> None:
    ahead, calls, status = _EdgesAhead(), [], {}  # type: ignore[var-annotated]
    ahead.ask(["b", "c"], fetcher({1}, calls))
    known, rest = await ahead.split(["b", "c"], owner, status)
    assert rest == ["c"] and all(st.ok for st in status.values()) and "1" not in status
    assert {(e.source, e.target) for e in known} == {("a", "b"), ("b", "c")}


async def test_a_guess_the_frontier_does_not_touch_is_not_waited_for() -> None:
    gate = asyncio.Event()

    async def slow(ids: list[str], status: Status) -> list[EdgeOut]:
        await gate.wait()
        return []

    ahead = _EdgesAhead()
    ahead.ask(["x"], slow)
    known, rest = await asyncio.wait_for(ahead.split(["a"], owner, {}), 1)
    assert (known, rest) == ([], ["a"])
    ahead.cancel()
