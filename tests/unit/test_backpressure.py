"""Write backpressure (router/backpressure.py): refuse writes to a shard whose replicas lag too far."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torua.errors import Overloaded
from torua_node.router.backpressure import RETRY_AFTER_MS, ApplyLag


def test_a_shard_lagging_past_the_limit_refuses_writes_until_applied() -> None:
    lag = ApplyLag(max_lag=5.0)
    lag.published(0, 10, now=100.0)
    lag.published(0, 12, now=103.0)
    lag.published(1, 11, now=100.0)
    lag.check([0, 1], now=104.9)  # 4.9 s behind: still fine
    with pytest.raises(Overloaded, match=r"shard 0 are 6\.0s behind .*TORUA_MAX_APPLY_LAG 5s") as refused:
        lag.check([0, 2], now=106.0)
    assert refused.value.retry_after_ms == RETRY_AFTER_MS and refused.value.code == 503
    lag.applied(0, 10)  # the oldest entry is applied: the next one is 3 s old
    lag.check([0], now=106.0)
    assert lag.lag(0, now=106.0) == 3.0
    lag.applied(0, 9)  # an older notice (another replica) changes nothing
    assert lag.lag(0, now=106.0) == 3.0
    with pytest.raises(Overloaded, match="shard 1"):
        lag.check([1], now=106.0)
    lag.forget(1)
    lag.check([1], now=106.0)


def test_zero_turns_it_off_and_applied_entries_are_not_remembered() -> None:
    off = ApplyLag(max_lag=0)
    off.published(0, 1, now=0.0)
    off.check([0], now=1e9)
    on = ApplyLag(max_lag=1.0)
    on.applied(0, 50)
    on.published(0, 40, now=0.0)  # applied before its acknowledgement was seen
    on.check([0], now=100.0)


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 50), st.booleans()), max_size=60))
def test_lag_is_the_age_of_the_oldest_unapplied_publish(events: list[tuple[int, int, bool]]) -> None:
    lag = ApplyLag(max_lag=10.0)
    published: dict[int, list[tuple[int, float]]] = {}
    applied: dict[int, int] = {}
    for t, (shard, seq, is_apply) in enumerate(events):
        if is_apply:
            lag.applied(shard, seq)
            applied[shard] = max(applied.get(shard, 0), seq)
        elif seq > applied.get(shard, 0):
            lag.published(shard, seq, now=float(t))
            published.setdefault(shard, []).append((seq, float(t)))
    now = float(len(events))
    for shard, items in published.items():
        # Acknowledgements arrive in stream order per shard in practice; the oldest time still pending:
        waiting = [at for seq, at in items if seq > applied.get(shard, 0)]
        if waiting and all(a[0] < b[0] for a, b in zip(items, items[1:])):
            assert lag.lag(shard, now) == now - min(waiting)
