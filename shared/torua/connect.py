"""Connecting to NATS with a bounded wait (nats-py would otherwise retry for minutes)."""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client as NATS

from torua.errors import Unavailable

__all__ = ["connect", "Connection"]

log = logging.getLogger(__name__)


class Connection(NATS):
    """nats-py's client, with one fix: a flush that was cancelled or timed out leaves a cancelled
    future in the PONG queue, and nats-py 2.16 then fails on the next PONG with InvalidStateError,
    which ends its read loop and silently wedges the whole connection. Skip such futures instead.
    """

    async def _process_pong(self) -> None:
        if self._pongs and self._pongs[0].done():
            # This PONG answers a flush nobody waits for any more: consume it, resolve nothing.
            self._pongs.pop(0)
            self._pongs_received += 1
            self._pings_outstanding = 0
            return
        await super()._process_pong()


async def connect(url: str, *, name: str, timeout: float = 5.0, service: bool = False) -> NATS:
    """Connect within `timeout` seconds or raise Unavailable naming the URL.

    Services (`service=True`) then reconnect forever after a disconnect; clients give up sooner.
    """

    async def _quiet(exc: Exception) -> None:
        log.debug("nats: %s", exc)

    nc = Connection()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=[s.strip() for s in url.split(",") if s.strip()],
                name=name,
                # Seconds, fractions too: nats-py annotates both as int but uses them as floats.
                connect_timeout=min(timeout, 2.0),  # type: ignore[arg-type]
                max_reconnect_attempts=-1 if service else 10,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]
                error_cb=_quiet,
                allow_reconnect=True,
            ),
            timeout,
        )
        return nc
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise Unavailable(f"cannot connect to NATS at {url} within {timeout:g}s ({type(exc).__name__})") from None
