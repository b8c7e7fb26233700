"""Leader election: a lease in JetStream KV, taken and renewed with compare-and-set.

Every new leadership is a new term (`epoch`): one more than the lease's previous epoch. The leader
stamps its epoch on every shard map it publishes (app.py), so a map from an older leader can be
told apart and ignored (docs/consistency.md#a-fenced-coordinator).

No wall clocks: a standby takes an expired lease when it has seen the lease key's revision unchanged
for `ttl` by its own monotonic clock (the leader renews it every tick, so the revision moves while
it lives). The leader counts its lease valid until `LEADER_SHARE` of `ttl` after the moment it sent
the renewal, by its monotonic clock: before any standby can judge it expired, however far apart the
hosts' wall clocks are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec
from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from torua.subjects import KV_LEADER
from torua.wire import LeaderLease

__all__ = ["Lease", "LEADER_SHARE"]

log = logging.getLogger(__name__)

# The share of the TTL the leader counts on (margin for clock rates and the renewal's round trip).
LEADER_SHARE = 0.8


class Lease:
    def __init__(self, kv: KeyValue, holder: str, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._kv = kv
        self.holder = holder
        self.ttl = ttl
        self._clock = clock
        self.held = False
        self.epoch = 0  # the term held now (or last held by this process); 0: never held
        self._revision = 0  # the lease key's revision our last write made
        self._valid_until = 0.0  # monotonic
        self._seen: tuple[int, float] | None = None  # (lease key revision, monotonic when first seen)

    def valid(self) -> bool:
        """Held, and by our monotonic clock still within the lease: safe to write under `epoch`."""
        return self.held and self._clock() < self._valid_until

    def _value(self, epoch: int, holder: str | None = None) -> bytes:
        holder = self.holder if holder is None else holder
        expires = time.time() + self.ttl if holder else 0.0
        return msgspec.json.encode(LeaderLease(holder=holder, expires_at=expires, epoch=epoch))

    def _expired(self, revision: int, now: float) -> bool:
        """The lease key has not moved for a TTL by our clock (its holder stopped renewing)."""
        if self._seen is None or self._seen[0] != revision:
            self._seen = (revision, now)
            return False
        return now - self._seen[1] > self.ttl

    async def refresh(self) -> bool:
        """Take the lease if free or expired, renew it if ours; returns whether we hold it now.

        Taking it starts a new term (`epoch` + 1). A process that has never led takes a lease in its
        own name at once (it is this coordinator restarted: ids must be unique)."""
        sent = self._clock()
        try:
            entry = await self._kv.get(KV_LEADER)
        except (KeyNotFoundError, KeyDeletedError):
            entry = None
        now = self._clock()
        try:
            lease = msgspec.json.decode(entry.value, type=LeaderLease) if entry is not None and entry.value else None
            ours = lease is not None and lease.holder == self.holder
            if lease is not None and entry is not None and self.held and ours and lease.epoch == self.epoch:
                self._revision = await self._kv.update(KV_LEADER, self._value(self.epoch), last=entry.revision)
            elif (
                lease is None
                or not lease.holder
                or (ours and (self.epoch == 0 or lease.epoch == self.epoch))
                or (entry is not None and self._expired(entry.revision or 0, now))
            ):
                epoch = (lease.epoch if lease is not None else 0) + 1
                if entry is None:
                    self._revision = await self._kv.create(KV_LEADER, self._value(epoch))
                else:
                    self._revision = await self._kv.update(KV_LEADER, self._value(epoch), last=entry.revision)
                if not self.held or epoch != self.epoch:
                    log.info("%s took the lease: epoch %d", self.holder, epoch)
                self.epoch = epoch
            else:
                self.held = False
                return False
            self.held = True
            self._valid_until = sent + self.ttl * LEADER_SHARE
        except (KeyWrongLastSequenceError, APIError, msgspec.DecodeError) as exc:
            log.debug("lease race lost: %s", exc)
            self.held = False
        return self.held

    async def advance(self, epoch: int) -> bool:
        """Raise our term to `epoch` (the map in KV already carries ours or a later one, e.g. the
        lease key was purged); returns False, no longer holding it, if the lease moved meanwhile."""
        try:
            self._revision = await self._kv.update(KV_LEADER, self._value(epoch), last=self._revision)
            self.epoch = epoch
        except (KeyWrongLastSequenceError, APIError) as exc:
            log.debug("lease moved while advancing the epoch: %s", exc)
            self.held = False
        return self.held

    def drop(self) -> None:
        """Stop leading at once (a map write lost its compare-and-set); the lease stays in KV."""
        self.held = False
        self._valid_until = 0.0

    async def release(self) -> None:
        """Hand the lease over (holder empty, epoch kept, so the next term still counts up)."""
        if not self.held:
            return
        try:
            await self._kv.update(KV_LEADER, self._value(self.epoch, holder=""), last=self._revision)
        except Exception:
            log.debug("lease release failed", exc_info=True)
        self.held = False
