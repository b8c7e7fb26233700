"""Ending background tasks reliably."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["end_task", "retrieved"]

log = logging.getLogger(__name__)


def retrieved(fut: asyncio.Future[Any]) -> None:
    """A done callback for a future whose every waiter may be gone (cancelled, or never awaiting
    it): its error is marked retrieved, so that asyncio does not report it."""
    if not fut.cancelled():
        fut.exception()


async def end_task(task: asyncio.Task[Any], timeout: float) -> None:
    """Cancel `task` and wait for it to end; after `timeout` seconds, warn and go on without it.

    One cancel() can be lost on Python 3.11: asyncio.wait_for, inside every nats-py request,
    returns the reply instead of raising when the cancel lands as the reply arrives (CPython
    gh-86296). So cancel again while waiting.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done() and (left := deadline - loop.time()) > 0:
        task.cancel()
        await asyncio.wait({task}, timeout=min(left, 1.0))
    if not task.done():
        log.warning("task %s still running %.0fs after cancel; going on without it", task.get_name(), timeout)
    else:
        retrieved(task)  # so that asyncio does not report its error at exit
