"""end_task: a task that swallows a cancel (as asyncio.wait_for can on Python 3.11) still ends."""

from __future__ import annotations

import asyncio
import logging

import pytest

from torua.tasks import end_task


async def test_a_task_that_swallows_its_first_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr] - what the bug amounts to

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await end_task(task, timeout=5.0)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_never_ends_is_left_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="torua_node.node.tasks"):
        await end_task(task, timeout=0.3)
    assert not task.done()
    assert "task deaf still running" in caplog.text
    release.set()
    await task


async def test_a_task_that_failed_has_its_exception_retrieved() -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(boom())
    await asyncio.wait({task})
    await end_task(task, timeout=1.0)  # no "exception was never retrieved" at exit, no raise here
    assert isinstance(task.exception(), RuntimeError)
