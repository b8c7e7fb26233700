"""The write-version clock (torua.hlc): strictly increasing whatever the wall clock does."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from torua.hlc import (
    COUNTER_BITS,
    EPOCH_US,
    MAX_VERSION,
    ROUTER_BITS,
    HybridClock,
    version_of,
    version_wall_ms,
)

NOW_US = 1_780_000_000_000_000  # 2026


class FakeWall:
    def __init__(self, steps: list[int]) -> None:
        self.t = NOW_US
        self.steps = iter(steps)

    def __call__(self) -> int:
        self.t += next(self.steps, 0)
        return self.t


# Wall clock steps in µs: stalls, small and large jumps both ways (NTP steps, VM pauses).
steps = st.lists(st.sampled_from([0, 0, 1, 7, 1000, -1, -5000, -10**9, 10**6]) | st.integers(-10**7, 10**7),
                 max_size=200)


@given(steps=steps, router=st.integers(0, (1 << ROUTER_BITS) - 1))
def test_versions_strictly_increase_whatever_the_wall_clock_does(steps: list[int], router: int) -> None:
    clock = HybridClock(FakeWall(steps), router=router)
    versions = [clock.now() for _ in range(len(steps) + 1)]
    assert all(a < b for a, b in itertools.pairwise(versions))
    assert all(v & ((1 << ROUTER_BITS) - 1) == router for v in versions)
    assert all(0 < v <= MAX_VERSION for v in versions)


@given(steps=steps, seen=st.lists(st.integers(0, MAX_VERSION >> 1), max_size=20))
def test_a_version_follows_every_version_observed(steps: list[int], seen: list[int]) -> None:
    clock = HybridClock(FakeWall(steps), router=3)
    last = 0
    for v in seen:
        clock.observe(v)
        now = clock.now()
        assert now > v and now > last
        last = now


@given(offset_us=st.integers(0, 10**15), counter=st.integers(0, (1 << COUNTER_BITS) - 1))
def test_the_wall_time_of_a_version_is_recovered_and_orders_like_it(offset_us: int, counter: int) -> None:
    v = version_of(EPOCH_US + offset_us, counter, router=5)
    assert version_wall_ms(v) == (EPOCH_US + offset_us) // 1000
    assert version_of(EPOCH_US + offset_us + 1) > v  # a later microsecond beats any counter and router


def test_versions_follow_the_wall_clock_when_it_advances() -> None:
    wall = FakeWall([1000] * 10)
    a, b = HybridClock(wall, router=1023), HybridClock(wall, router=0)
    first = a.now()
    second = b.now()  # another router, 1 ms later: ordered after, despite its lower router bits
    assert second > first
    assert version_wall_ms(second) - version_wall_ms(first) == 1


def test_two_routers_never_tie_at_the_same_instant() -> None:
    wall = lambda: NOW_US  # noqa: E731
    a, b = HybridClock(wall, router=1), HybridClock(wall, router=2)
    assert a.now() != b.now()
