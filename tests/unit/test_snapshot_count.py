"""When a replica takes its next automatic snapshot: `EntriesSince` counts the entries applied past
the newest snapshot of the shard it knows of."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from torua_node.shard.snapshot import EntriesSince


def test_entries_applied_while_a_snapshot_is_taken_count_towards_the_next() -> None:
    since = EntriesSince()
    since.applied(10, 10)  # TORUA_SNAPSHOT_EVERY=10 reached: a snapshot starts at position 10
    since.applied(14, 4)  # applied while it is taken
    since.applied(19, 5)
    since.snapshot_at(10)  # stored
    assert since.count == 9  # not 0: one more entry and the next snapshot is due


def test_sequences_of_other_shards_are_not_counted() -> None:
    since = EntriesSince()
    since.applied(100, 1)  # the log is shared: this shard's entries are far apart
    since.applied(250, 2)
    since.snapshot_at(100)
    assert since.count == 2


def test_an_older_snapshot_changes_nothing_and_a_failure_postpones() -> None:
    since = EntriesSince(base=50)
    since.applied(40, 3)  # at or before the snapshot restored from: nothing to count
    since.applied(60, 12)
    since.snapshot_at(45)
    assert since.count == 12
    since.postpone(5)
    assert since.count == 5
    since.applied(61, 1)
    assert since.count == 6
    since.snapshot_at(60)  # a snapshot exists after all: the count is exact again
    assert since.count == 1


@given(
    st.lists(st.tuples(st.integers(1, 5), st.integers(1, 4)), min_size=1, max_size=40),
    st.lists(st.integers(0, 40), max_size=10),
)
def test_the_count_is_the_entries_applied_past_the_newest_snapshot(batches: list[tuple[int, int]], at: list[int]) -> None:
    since, seq, applied = EntriesSince(), 0, []
    for gap, n in batches:
        seq += gap + n  # other shards' entries in between
        applied.append((seq, n))
    snaps = [applied[i % len(applied)][0] for i in at]  # snapshots are at batch ends, in any order
    step = max(1, len(applied) // (len(snaps) + 1))
    newest = 0
    for i, (last, n) in enumerate(applied):
        since.applied(last, n)
        if snaps and i % step == 0:
            s = snaps.pop()
            since.snapshot_at(s)
            newest = max(newest, s)
        assert since.count == sum(k for end, k in applied[: i + 1] if end > newest)
