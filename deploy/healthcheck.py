#!/usr/bin/env python
"""Container health check for the Torua services (installed in the image as `torua-healthcheck`).

    torua-healthcheck node          # this node answers torua.node.<its id>.health with status ok
    torua-healthcheck coordinator   # a leading coordinator answers torua.cluster.health
    torua-healthcheck               # the role is read from PID 1's command line (`torua node`, ...)

Exit 0 when healthy, 1 otherwise, with one line saying why. Settings come from the same
environment as the service: NATS_URL, and for a node TORUA_NODE_ID or else the id the node keeps in
TORUA_DATA_DIR/node_id (written at its first start, so a node is unhealthy until it has one), and
the service's NATS credentials and TLS (TORUA_NATS_USER, TORUA_NATS_PASSWORD or _PASSWORD_FILE,
TORUA_NATS_TOKEN or _TOKEN_FILE, TORUA_NATS_NKEY_SEED, TORUA_NATS_CREDS, TORUA_NATS_TLS_CA/_CERT/_KEY).
Only nats-py and the standard library are used, and only the public subjects, so the check keeps
working whatever changes inside the services.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from pathlib import Path

import nats

ROLES = ("coordinator", "node")


class Unhealthy(Exception):
    pass


def role_of_pid1() -> str | None:
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [os.path.basename(a.decode(errors="replace")) for a in argv if a]
    return next((w for w in words if w in ROLES), None)


def node_id() -> str:
    configured = os.environ.get("TORUA_NODE_ID", "").strip()
    if configured:
        return configured
    id_file = Path(os.environ.get("TORUA_DATA_DIR", "data/node")) / "node_id"
    try:
        nid = id_file.read_text().strip()
    except OSError as exc:
        raise Unhealthy(f"no node id yet ({id_file}: {exc.strerror})") from None
    if not nid:
        raise Unhealthy(f"{id_file} is empty")
    return nid


def _setting(name: str) -> str | None:
    """TORUA_<name>, or the content of the file TORUA_<name>_FILE names; unset or empty: None."""
    value = os.environ.get(f"TORUA_{name}", "").strip()
    if value:
        return value
    path = os.environ.get(f"TORUA_{name}_FILE", "").strip()
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise Unhealthy(f"TORUA_{name}_FILE: cannot read {path} ({exc.strerror})") from None
    return None


def credentials() -> dict[str, object]:
    """nats-py connect options from the same variables as the service (torua.settings)."""
    opts: dict[str, object] = {}
    user = _setting("NATS_USER")
    if user:
        opts["user"] = user
        password = _setting("NATS_PASSWORD")
        if password is not None:
            opts["password"] = password
    token = _setting("NATS_TOKEN")
    if token:
        opts["token"] = token
    if seed := os.environ.get("TORUA_NATS_NKEY_SEED", "").strip():
        opts["nkeys_seed"] = seed
    if creds := os.environ.get("TORUA_NATS_CREDS", "").strip():
        opts["user_credentials"] = creds
    ca = os.environ.get("TORUA_NATS_TLS_CA", "").strip()
    cert = os.environ.get("TORUA_NATS_TLS_CERT", "").strip()
    key = os.environ.get("TORUA_NATS_TLS_KEY", "").strip()
    if ca or cert:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
        if cert:
            ctx.load_cert_chain(cert, key or None)
        opts["tls"] = ctx
    return opts


async def probe(role: str, url: str, timeout: float) -> str:
    if role == "coordinator":
        subject, expect_id = "torua.cluster.health", None
    else:
        expect_id = node_id()
        subject = f"torua.node.{expect_id}.health"

    async def quiet(exc: Exception) -> None:  # the reason is reported once, below, not logged per attempt
        pass

    servers = [s.strip() for s in url.split(",") if s.strip()]
    # Try each server about twice, then give up (nats-py would otherwise keep trying the pool).
    nc = await nats.connect(
        servers=servers,
        name="torua-healthcheck",
        connect_timeout=timeout,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.1,
        error_cb=quiet,
        **credentials(),  # type: ignore[arg-type]
    )
    try:
        msg = await nc.request(subject, b"{}", timeout=timeout)
    finally:
        await nc.close()
    code = (msg.headers or {}).get("Nats-Service-Error-Code")
    if code:
        raise Unhealthy(
            f"{subject} answered error {code}: {(msg.headers or {}).get('Nats-Service-Error', '')}"
        )
    body = json.loads(msg.data or b"{}")
    if body.get("status") != "ok":
        raise Unhealthy(f"{subject} answered status {body.get('status')!r}")
    if expect_id is not None and body.get("node_id") != expect_id:
        raise Unhealthy(f"{subject} answered for node {body.get('node_id')!r}, expected {expect_id!r}")
    return subject


def main(argv: list[str]) -> int:
    role = argv[0] if argv else role_of_pid1()
    if role not in ROLES:
        print(f"torua-healthcheck: role must be one of {', '.join(ROLES)} (got {role!r})", file=sys.stderr)
        return 1
    url = os.environ.get("NATS_URL") or "nats://127.0.0.1:4222"
    timeout = float(os.environ.get("TORUA_HEALTHCHECK_TIMEOUT", "3"))
    try:
        subject = asyncio.run(asyncio.wait_for(probe(role, url, timeout), timeout * 2))
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    except TimeoutError:
        print(f"unhealthy: no answer within {timeout:g}s (NATS at {url})")
        return 1
    except Exception as exc:  # noqa: BLE001 - no responders, connection refused, ...: all mean unhealthy
        print(f"unhealthy: {type(exc).__name__}: {exc}")
        return 1
    print(f"ok: {subject}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
