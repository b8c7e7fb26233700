"""The node follows no shard map older than the newest it has seen (epoch, then revision)."""

from __future__ import annotations

from torua_node.node.mapfence import MapFence


def test_first_map_is_followed_whatever_its_epoch() -> None:
    assert MapFence().admit(0, 1)  # a map from before epochs existed
    assert MapFence().admit(7, 3)


def test_a_lower_epoch_is_ignored_even_with_a_higher_revision() -> None:
    fence = MapFence()
    assert fence.admit(3, 10)
    assert not fence.admit(2, 11)  # a deposed leader's write, read after the new leader's
    assert not fence.admit(2, 99)
    assert (fence.epoch, fence.revision) == (3, 10)


def test_same_epoch_orders_by_revision() -> None:
    fence = MapFence()
    assert fence.admit(3, 10)
    assert not fence.admit(3, 9)  # the periodic read returned an older copy than the watch had
    assert fence.admit(3, 10)  # the same map again: followed (the node retries its reconcile)
    assert fence.admit(3, 11)
    assert (fence.epoch, fence.revision) == (3, 11)


def test_a_higher_epoch_is_followed_even_with_a_lower_revision() -> None:
    fence = MapFence()
    assert fence.admit(3, 10)
    assert fence.admit(4, 2)
    assert not fence.admit(3, 11)
    assert (fence.epoch, fence.revision) == (4, 2)
