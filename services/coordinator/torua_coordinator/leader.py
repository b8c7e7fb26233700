"""Leader election: a lease in JetStream KV, taken and renewed with compare-and-set."""

from __future__ import annotations

import logging
import time

import msgspec
from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from torua.subjects import KV_LEADER
from torua.wire import LeaderLease

__all__ = ["Lease"]

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, kv: KeyValue, holder: str, ttl: float) -> None:
        self._kv = kv
        self.holder = holder
        self.ttl = ttl
        self.held = False

    def _value(self) -> bytes:
        return msgspec.json.encode(LeaderLease(holder=self.holder, expires_at=time.time() + self.ttl))

    async def refresh(self) -> bool:
        """Take the lease if free or expired, renew it if ours; returns whether we hold it now."""
        try:
            entry = await self._kv.get(KV_LEADER)
        except (KeyNotFoundError, KeyDeletedError):
            entry = None
        try:
            if entry is None or entry.value is None:
                await self._kv.create(KV_LEADER, self._value())
                self.held = True
            else:
                lease = msgspec.json.decode(entry.value, type=LeaderLease)
                if lease.holder == self.holder or lease.expires_at < time.time():
                    await self._kv.update(KV_LEADER, self._value(), last=entry.revision)
                    self.held = True
                else:
                    self.held = False
        except (KeyWrongLastSequenceError, APIError, msgspec.DecodeError) as exc:
            log.debug("lease race lost: %s", exc)
            self.held = False
        return self.held

    async def release(self) -> None:
        if not self.held:
            return
        try:
            entry = await self._kv.get(KV_LEADER)
            lease = msgspec.json.decode(entry.value or b"{}", type=LeaderLease)
            if lease.holder == self.holder:
                await self._kv.delete(KV_LEADER, last=entry.revision)
        except Exception:
            log.debug("lease release failed", exc_info=True)
        self.held = False
