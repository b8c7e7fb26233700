"""Connecting to NATS with a bounded wait (nats-py would otherwise retry for minutes)."""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client as NATS

from torua.errors import Unavailable

__all__ = ["connect"]

log = logging.getLogger(__name__)


async def connect(url: str, *, name: str, timeout: float = 5.0, service: bool = False) -> NATS:
    """Connect within `timeout` seconds or raise Unavailable naming the URL.

    Services (`service=True`) then reconnect forever after a disconnect; clients give up sooner.
    """

    async def _quiet(exc: Exception) -> None:
        log.debug("nats: %s", exc)

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=[s.strip() for s in url.split(",") if s.strip()],
                name=name,
                connect_timeout=min(timeout, 2.0),
                max_reconnect_attempts=-1 if service else 10,
                reconnect_time_wait=0.5,
                error_cb=_quiet,
                allow_reconnect=True,
            ),
            timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise Unavailable(f"cannot connect to NATS at {url} within {timeout:g}s ({type(exc).__name__})") from None
