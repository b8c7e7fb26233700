"""Connecting to NATS with a bounded wait (nats-py would otherwise retry for minutes), with the
credentials and TLS settings of `NatsAuth` (docs/security.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from torua.errors import ToruaError, Unavailable

__all__ = ["connect", "Connection", "NatsAuth", "PermissionDenied"]

_PUBLISH_DENIED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class PermissionDenied(ToruaError):
    """The NATS server refused to let this connection's user publish to a subject (its role's
    permissions, docs/security.md). Not retryable."""

    code = 403

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """How to authenticate to NATS, and TLS: at most one of user/password, token, nkey seed file,
    creds file; TLS with a CA (to verify the server) and a cert and key (to be verified by it).

    Secrets never appear in repr() or logs. Build one from the environment with
    `torua.settings.nats_auth_from_env()`, or from a service's settings (`settings.nats_auth`).
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: Path | None = None  # a file holding an nkey seed (SU...)
    creds: Path | None = None  # a .creds file (JWT and seed)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def method(self) -> str:
        """What authenticates this connection, for messages: never the secret itself."""
        if self.creds:
            return f"creds file {self.creds}"
        if self.nkey_seed:
            return f"nkey seed file {self.nkey_seed}"
        if self.user:
            return f"user {self.user!r}"
        if self.token:
            return "a token"
        return "no credentials"

    @property
    def has_credentials(self) -> bool:
        return bool(self.user or self.token or self.nkey_seed or self.creds)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert:
            ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
        return ctx

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's `connect`."""
        opts: dict[str, Any] = {}
        if self.user:
            opts["user"] = self.user
            if self.password is not None:
                opts["password"] = self.password
        if self.token:
            opts["token"] = self.token
        if self.nkey_seed:
            opts["nkeys_seed"] = str(self.nkey_seed)
        if self.creds:
            opts["user_credentials"] = str(self.creds)
        if (ctx := self.ssl_context()) is not None:
            opts["tls"] = ctx
        return opts


NO_AUTH = NatsAuth()


class Connection(NATS):
    """nats-py's client, with two changes.

    A flush that was cancelled or timed out leaves a cancelled future in the PONG queue, and
    nats-py 2.16 then fails on the next PONG with InvalidStateError, which ends its read loop and
    silently wedges the whole connection. Skip such futures instead.

    A request to a subject the server does not let this user publish to gets no reply: with
    `fail_fast_denied` (clients), it raises PermissionDenied as soon as the server says so,
    instead of waiting for the timeout (and being retried as if the service were down).
    """

    def __init__(self, *, fail_fast_denied: bool = False) -> None:
        super().__init__()
        self._fail_fast_denied = fail_fast_denied
        self._denied_waiters: dict[str, list[tuple[str, asyncio.Future[Any]]]] = {}

    def publish_denied(self, text: str) -> None:
        """The server's permissions violation for a publish: fail the requests waiting on it."""
        m = _PUBLISH_DENIED.search(text)
        if m is None:
            return
        # nats-py lowercases the server's error, subject included: waiters are keyed in lower case.
        key = m.group(1).lower()
        user = self.options.get("user") if hasattr(self, "options") else None
        who = f"the NATS user {user!r}" if user else "this NATS connection"
        for subject, waiter in self._denied_waiters.pop(key, []):
            if not waiter.done():
                waiter.set_exception(PermissionDenied(
                    f"permission denied: {who} may not publish to {subject} (its role's permissions: docs/security.md)"
                ))

    @contextlib.contextmanager
    def on_denied(self, subject: str, waiter: asyncio.Future[Any]) -> Iterator[None]:
        """While inside, the server's refusal to let this user publish to `subject` fails `waiter`
        with PermissionDenied (with `fail_fast_denied`; otherwise nothing is watched)."""
        if not self._fail_fast_denied:
            yield
            return
        key, entry = subject.lower(), (subject, waiter)
        self._denied_waiters.setdefault(key, []).append(entry)
        try:
            yield
        finally:
            waiters = self._denied_waiters.get(key)
            if waiters is not None and entry in waiters:
                waiters.remove(entry)
                if not waiters:
                    del self._denied_waiters[key]

    async def request(
        self, subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg:
        if not self._fail_fast_denied:
            return await super().request(subject, payload, timeout=timeout, old_style=old_style, headers=headers)
        # Only ever fails (PermissionDenied); typed as the reply so that both can be awaited together.
        denied: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        with self.on_denied(subject, denied):
            reply = asyncio.ensure_future(
                super().request(subject, payload, timeout=timeout, old_style=old_style, headers=headers)
            )
            try:
                await asyncio.wait({reply, denied}, return_when=asyncio.FIRST_COMPLETED)
                if reply.done():
                    return reply.result()
                reply.cancel()
                return denied.result()  # raises PermissionDenied
            finally:
                if not reply.done():
                    reply.cancel()
                if not denied.done():
                    denied.cancel()

    async def _process_pong(self) -> None:
        if self._pongs and self._pongs[0].done():
            # This PONG answers a flush nobody waits for any more: consume it, resolve nothing.
            self._pongs.pop(0)
            self._pongs_received += 1
            self._pings_outstanding = 0
            return
        await super()._process_pong()


async def connect(
    url: str, *, name: str, timeout: float = 5.0, service: bool = False, auth: NatsAuth | None = None
) -> NATS:
    """Connect within `timeout` seconds or raise Unavailable naming the URL.

    Services (`service=True`) then reconnect forever after a disconnect; clients give up sooner.
    `auth`: credentials and TLS (none by default). A publish or subscribe the server refuses
    (its permissions) is logged as a warning naming the subject.
    """
    auth = auth or NO_AUTH
    refused: list[str] = []

    async def _errors(exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" in text.lower():
            # A service that is refused something is misconfigured: say so. A client's refused
            # request raises PermissionDenied, which says it to the caller instead.
            log.log(logging.DEBUG if not service else logging.WARNING, "%s", text)
            nc.publish_denied(text)
        elif isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text.lower():
            refused.append(text)
            log.debug("nats: %s", exc)
        else:
            log.debug("nats: %s", exc)

    try:
        options = auth.connect_options()
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot set up TLS for NATS at {url}: {exc}") from None
    # Permissions come with credentials: a client that has some learns at once that it was refused.
    nc = Connection(fail_fast_denied=not service and auth.has_credentials)
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=[s.strip() for s in url.split(",") if s.strip()],
                name=name,
                # Seconds, fractions too: nats-py annotates both as int but uses them as floats.
                connect_timeout=min(timeout, 2.0),  # type: ignore[arg-type]
                max_reconnect_attempts=-1 if service else 10,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]
                error_cb=_errors,
                allow_reconnect=True,
                **options,
            ),
            timeout,
        )
        return nc
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        if refused or isinstance(exc, nats.errors.AuthorizationError):
            await _close_quietly(nc)
            raise Unavailable(
                f"NATS at {url} refused the connection: authorization violation (connecting with {auth.method})"
            ) from None
        await _close_quietly(nc)
        raise Unavailable(f"cannot connect to NATS at {url} within {timeout:g}s ({type(exc).__name__})") from None


async def _close_quietly(nc: NATS) -> None:
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except Exception:  # noqa: BLE001 - already failing; the caller reports why
        pass
