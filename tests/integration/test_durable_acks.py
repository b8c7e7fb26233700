"""The NATS servers Torua ships run JetStream with `sync_interval: always`: every message is fsynced
before it is acknowledged, so an acknowledged write survives an OS crash of a single server.

Checked on the running servers themselves (their /varz), for the server `torua up` (and the test
fixtures) start and for both compose configurations. The cost is measured by
`python -m bench.durability` (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from torua.natsserver import find_nats_server, start_nats_server

NATS_CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "nats"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _jetstream_config(monitor_port: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=2) as resp:
                return json.load(resp)["jetstream"]["config"]
        except (OSError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_server_torua_up_starts_fsyncs_every_acknowledged_write(tmp_path: Path) -> None:
    port = _free_port()
    server = start_nats_server(tmp_path / "nats", monitor_port=port)
    try:
        assert _jetstream_config(port)["sync_always"] is True
    finally:
        server.stop()


def test_the_servers_default_is_what_the_durable_setting_replaces(tmp_path: Path) -> None:
    """The control: without the setting JetStream syncs only every 2 minutes."""
    port = _free_port()
    server = start_nats_server(tmp_path / "nats", monitor_port=port, sync_interval=None)
    try:
        config = _jetstream_config(port)
        assert config.get("sync_always", False) is False and config["sync_interval"] == 120 * 10**9
    finally:
        server.stop()


@pytest.mark.parametrize("conf", ["single.conf", "cluster.conf"])
def test_compose_nats_configs_fsync_every_acknowledged_write(conf: str, tmp_path: Path) -> None:
    text = (NATS_CONFIGS / conf).read_text()
    assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.MULTILINE), conf
    # The same file, run here: loopback ports and a temporary store instead of the container's.
    monitor = _free_port()
    local = (text.replace("0.0.0.0:4222", "127.0.0.1:-1").replace("0.0.0.0:8222", f"127.0.0.1:{monitor}")
             .replace("0.0.0.0:6222", "127.0.0.1:-1").replace("store_dir: /data", f'store_dir: "{tmp_path / "js"}"'))
    assert "0.0.0.0" not in local and "/data" not in local.replace(str(tmp_path), "")
    path = tmp_path / conf
    path.write_text(local)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "TORUA_"))}
    env["NATS_SERVER_NAME"] = "nats-1"
    with open(tmp_path / "nats.log", "wb") as log:
        proc = subprocess.Popen([find_nats_server(), "-c", str(path)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _jetstream_config(monitor)["sync_always"] is True
    finally:
        proc.terminate()
        proc.wait(10)
