"""`torua.collector`: survivors of a full collection are frozen (a later full collection does not walk
them, so cyclic garbage among them waits), thawed by `release()` and every `THAW_EVERY`-th full
collection. Each case runs in a fresh interpreter: the collector's state is the process's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import gc, weakref
from torua import collector

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)
"""


def run(body: str) -> str:
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_tune_raises_the_young_threshold_and_keeps_the_others() -> None:
    out = run("""
        before = gc.get_threshold()
        collector.tune()
        collector.tune()  # a second call adds no second callback
        after = gc.get_threshold()
        print(after[0] == collector.YOUNG_THRESHOLD, after[1:] == before[1:],
              sum(type(cb).__name__ == "_Freezer" for cb in gc.callbacks))
    """)
    assert out == "True True 1"


def test_a_full_collection_freezes_its_survivors() -> None:
    out = run("""
        collector.tune()
        kept, _ = cycle()
        gc.collect()
        print(gc.get_freeze_count() > 0)
    """)
    assert out == "True"


def test_without_tune_nothing_is_frozen() -> None:
    out = run("""
        kept, _ = cycle()
        gc.collect()
        print(gc.get_freeze_count())
    """)
    assert out == "0"


def test_frozen_cyclic_garbage_waits_for_release() -> None:
    out = run("""
        collector.tune()
        kept, ref = cycle()
        gc.collect()  # the cycle survives (still referenced) and is frozen
        del kept
        gc.collect()
        frozen_alive = ref() is not None
        collector.release()
        gc.collect()
        print(frozen_alive, ref() is None)
    """)
    assert out == "True True"


@pytest.mark.parametrize("thaw_every", [2, 5])
def test_every_nth_full_collection_thaws(thaw_every: int) -> None:
    out = run(f"""
        collector.tune(thaw_every={thaw_every})
        kept, ref = cycle()
        gc.collect()  # full collection 1: frozen
        del kept
        n = 1
        while ref() is not None and n < 50:
            gc.collect()
            n += 1
        print(n)
    """)
    # Collection `thaw_every` thaws at its end; the one after it walks the thawed heap and frees the cycle.
    assert out == str(thaw_every + 1)
