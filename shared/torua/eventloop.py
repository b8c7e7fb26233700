"""The event loop Torua's processes run on.

uvloop (libuv under asyncio's API) where its wheel is installed, which is every Linux and macOS
install of Torua; asyncio's own loop elsewhere, or when a service's ``TORUA_EVENT_LOOP=asyncio``
asks for it (to rule the loop out when debugging).

Why: a read is a few NATS messages, so per-message overhead in the event loop is much of its
latency. Measured with ``python -m bench.query`` on 2 cores (3 nodes x 8 shards), asyncio → uvloop
in every process: ``graph.get`` p50 1.28 → 0.80 ms, 3-hop neighbours 11.1 → 7.4 ms,
``search.vector`` 5.9 → 4.7 ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["EventLoop", "new_event_loop", "run"]

T = TypeVar("T")

EventLoop = Literal["uvloop", "asyncio"]
"""The loops a process may run on: ``uvloop`` (the default, when installed) or ``asyncio``."""


def _factory(loop: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # no wheel for this platform (Windows): asyncio's loop serves
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def new_event_loop(loop: EventLoop = "uvloop") -> asyncio.AbstractEventLoop:
    """A new loop of the kind asked for (for a thread that runs one, like the sync client's)."""
    return _factory(loop)()


def run(main: Coroutine[Any, Any, T], loop: EventLoop = "uvloop") -> T:
    """``asyncio.run`` on the loop asked for: a process's entry point runs its main coroutine here."""
    with asyncio.Runner(loop_factory=_factory(loop)) as runner:
        return runner.run(main)
