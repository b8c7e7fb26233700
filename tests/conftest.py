"""Real parts only: every test that needs NATS gets a real nats-server on a random port."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from nats.aio.client import Client as NATS

from torua.connect import connect
from torua.natsserver import NatsServer, start_nats_server

T = TypeVar("T")

# Hypothesis profiles. `make test` keeps Hypothesis's own choice ("default", or "ci" where the CI
# variable is set, which fixes the examples): each property test runs its default example count.
# TORUA_HYPOTHESIS_PROFILE=long runs the deep search (README, "Tests"): every property test's long
# count, and 500 examples for tests that set none. Same strategies, same assertions: only how many.
HYPOTHESIS_PROFILE = os.environ.get("TORUA_HYPOTHESIS_PROFILE", "default")
if HYPOTHESIS_PROFILE not in ("default", "long"):
    raise pytest.UsageError(f"TORUA_HYPOTHESIS_PROFILE={HYPOTHESIS_PROFILE!r}: use 'default' or 'long'")
if HYPOTHESIS_PROFILE == "long":
    settings.register_profile("long", settings(), max_examples=500)
    settings.load_profile("long")


def examples(default: int, long: int) -> int:
    """`max_examples` for a property test: `default` in `make test`, `long` under the long profile."""
    return long if HYPOTHESIS_PROFILE == "long" else default


def _scratch_dir() -> str | None:
    """RAM-backed /dev/shm when it exists with room to spare, for the unit tests' throw-away Kuzu
    databases (tests/unit/conftest.py `tmp_path`, test_apply `temp_db`); None: the default temp
    directory. They stay real on-disk databases (files, WAL, checkpoints): only the fsyncs get
    cheap, and the unit tests compare contents, not durability. TORUA_TEST_TMPFS=0 turns it off."""
    if os.environ.get("TORUA_TEST_TMPFS", "1") == "0":
        return None
    try:
        if os.access("/dev/shm", os.W_OK) and shutil.disk_usage("/dev/shm").free > 1 << 30:
            return "/dev/shm"
    except OSError:
        pass
    return None


SCRATCH_DIR = _scratch_dir()


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
