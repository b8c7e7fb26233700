"""Presence: an added key is never reported absent, whatever the order and batching of adds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from torua_node.storage.presence import Presence

keys = st.one_of(st.text(max_size=8), st.tuples(st.text(max_size=4), st.text(max_size=4)))


@given(initial=st.lists(keys), batches=st.lists(st.lists(keys)), probes=st.lists(keys))
def test_added_keys_are_maybe_and_others_absent(
    initial: list, batches: list[list], probes: list
) -> None:
    p = Presence(initial)
    added = set(initial)
    for batch in batches:
        p.add(batch)
        added.update(batch)
    assert len(p) == len(added)  # duplicates are stored once
    assert p.maybe(list(added)).all()
    # 64-bit string hashes do not collide among a few hundred keys: absent keys read absent.
    assert p.maybe(probes).tolist() == [k in added for k in probes]


def test_empty_inputs() -> None:
    p = Presence()
    assert p.maybe([]).tolist() == [] and p.maybe(["a"]).tolist() == [False]
    p.add([])
    assert len(p) == 0
