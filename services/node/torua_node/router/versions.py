"""One version per write, even across its retries.

A write's shards' entries carry one version (torua.hlc), and every copy of a relation (stored at
both ends, often on two shards) applies last-writer-wins by it. A retry of a write (the same
request id, within the log's duplicate window) is stored only on the shards its first attempt did
not reach; if it took a new version there, the two ends of one relation would hold the same write
under two versions, and a write made in between would win at one end and lose at the other, for
good. So the first router to see a request id records the version it chose in `VERSIONS_BUCKET`
(create-if-absent, atomic in JetStream), and any router that sees the id again uses that one.
"""

from __future__ import annotations

import logging
import time

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from torua import subjects
from torua.errors import Unavailable
from torua.hlc import HybridClock
from torua.streams import versions_key

__all__ = ["WriteVersions"]

log = logging.getLogger(__name__)

LOOKUP_AGAIN_S = 10.0  # a missing bucket (a coordinator from before it) is looked for again after this
_ATTEMPTS = 3  # create, find it taken, read it: a key expiring in between starts over


class WriteVersions:
    """The version of each write by its request id, shared by every router through JetStream."""

    def __init__(self, js: JetStreamContext | None, clock: HybridClock) -> None:
        self._js = js
        self.clock = clock
        self._kv: KeyValue | None = None
        self._missing_until = 0.0
        self._quiet_until = 0.0  # warnings at most every LOOKUP_AGAIN_S

    async def of(self, request_id: str) -> int:
        """The version of the write `request_id`: a new one from the clock, unless a router has
        already chosen one for it within the duplicate window (then that one)."""
        kv = await self._bucket()
        if kv is None:
            return self.clock.now()
        key = versions_key(request_id)
        try:
            for _ in range(_ATTEMPTS):
                version = self.clock.now()
                try:
                    await kv.create(key, str(version).encode())
                    return version
                except KeyWrongLastSequenceError:
                    pass  # an earlier attempt of this write chose its version
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    continue  # expired in between: this is a new write after all
                if entry.value:
                    first = int(entry.value)
                    self.clock.observe(first)
                    return first
        except NatsTimeout:
            raise Unavailable("JetStream did not answer in time (write version); retry with the same request_id") from None
        except APIError as exc:
            # The bucket full (more writes within the window than VERSIONS_MAX_BYTES holds), say:
            # best effort, so the write goes on with a version from the clock, as before the bucket.
            self._warn(f"write versions bucket refused {request_id!r}: {exc}")
            return self.clock.now()
        raise Unavailable("could not settle this write's version; retry with the same request_id")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + LOOKUP_AGAIN_S
            log.warning("%s; a retried write may get a new version on the shards it had not reached", message)

    async def _bucket(self) -> KeyValue | None:
        if self._kv is not None or self._js is None:
            return self._kv
        if time.monotonic() < self._missing_until:
            return None
        try:
            self._kv = await self._js.key_value(subjects.VERSIONS_BUCKET)
        except BucketNotFoundError:
            # Its coordinator predates the bucket: versions come from the clock alone, as before.
            self._warn(f"no {subjects.VERSIONS_BUCKET} bucket")
            self._missing_until = time.monotonic() + LOOKUP_AGAIN_S
        return self._kv
