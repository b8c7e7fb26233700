from __future__ import annotations

from torua_node.router.cache import ResultCache


def test_entry_served_until_a_shard_it_read_moves_on() -> None:
    c = ResultCache()
    c.put(b"k", "reply", {0: 5, 1: 7}, now=0)
    assert c.get(b"k", {}, now=1) == "reply"
    c.note(2, 100)  # a shard the entry did not read
    assert c.get(b"k", {}, now=1) == "reply"
    c.note(1, 8)
    assert c.get(b"k", {}, now=1) is None
    assert (c.hits, c.misses) == (2, 1)


def test_write_tokens_newer_than_the_entry_miss() -> None:
    c = ResultCache()
    c.put(b"k", "reply", {0: 5}, now=0)
    assert c.get(b"k", {"0": 5}, now=1) == "reply"
    assert c.get(b"k", {"0": 6}, now=1) is None


def test_token_for_a_shard_the_entry_did_not_read_misses() -> None:
    c = ResultCache()
    c.put(b"k", "reply", {0: 5}, now=0)
    assert c.get(b"k", {"3": 1}, now=1) is None


def test_ttl_and_size_bound() -> None:
    c = ResultCache(max_entries=2, ttl=10)
    for i in range(3):
        c.put(bytes([i]), i, {0: 1}, now=0)
    assert len(c) == 2 and c.get(bytes([0]), {}, now=1) is None
    assert c.get(bytes([2]), {}, now=11) is None


def test_a_rebuilt_shard_is_forgotten_its_positions_may_count_in_another_log() -> None:
    c = ResultCache()
    c.put(b"old", "from the old log", {0: 5000, 1: 7}, now=0)
    c.put(b"other", "shard 1 only", {1: 7}, now=0)
    c.note(0, 5000)
    c.forget(0)  # a replica of shard 0 was rebuilt from a re-created log
    assert c.get(b"old", {"0": 10}, now=1) is None  # a token of the new log never meets old data
    assert c.get(b"other", {}, now=1) == "shard 1 only"
    c.note(0, 10)
    assert c.latest[0] == 10
