"""Real parts only: every test that needs NATS gets a real nats-server on a random port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nats.aio.client import Client as NATS

from torua.connect import connect
from torua.natsserver import NatsServer, start_nats_server

T = TypeVar("T")


def docker_available() -> bool:
    """Whether a Docker engine answers here (tests that need one are skipped otherwise)."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean skip
        return False


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats_server(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await connect(nats_server.url, name="test")
    yield conn
    await conn.close()


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling; shown if we time out
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)
