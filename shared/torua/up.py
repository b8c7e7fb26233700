"""`torua up`: a whole local cluster in one command — nats-server, a coordinator and N nodes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from torua import eventloop
from torua.auth import AuthSetup
from torua.client import Client
from torua.connect import NatsAuth
from torua.display import status_text
from torua.errors import ToruaError
from torua.natsserver import DURABLE_SYNC, NatsServer, start_nats_server
from torua.settings import NATS_AUTH_VARIABLES

__all__ = ["LocalCluster", "UpOptions", "run_up"]


@dataclass(slots=True)
class UpOptions:
    nodes: int = 3
    shards: int = 8
    replicas: int = 2
    port: int = 4222
    data_dir: Path = Path("data")
    heartbeat_interval: float = 1.0
    node_timeout: float = 5.0
    reassign_delay: float = 10.0
    extra_env: dict[str, str] = field(default_factory=dict)
    # JetStream's fsync policy (natsserver.DURABLE_SYNC: every acknowledged write survives an OS crash).
    nats_sync: str | None = DURABLE_SYNC
    sample: Path | None = None  # a directory to ingest once green (`torua up --sample samples`)
    # `torua up --auth`: roles service/admin/client with per-role permissions, anonymous refused.
    auth: bool = False


class LocalCluster:
    """Child processes of one local cluster; also what the integration tests drive."""

    def __init__(self, opts: UpOptions) -> None:
        self.opts = opts
        self.nats: NatsServer | None = None
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = opts.data_dir / "logs"
        # Fresh passwords on every start (restarting is how they are rotated: docs/security.md).
        self.auth: AuthSetup | None = AuthSetup.generate() if opts.auth else None

    @property
    def auth_file(self) -> Path:
        return self.opts.data_dir / "auth.json"

    @property
    def service_password_file(self) -> Path:
        return self.opts.data_dir / "nats" / "service.password"

    def credentials(self, role: str) -> NatsAuth | None:
        """How `role` (service, admin, client) connects; None without --auth."""
        return self.auth.auth(role) if self.auth is not None else None

    @property
    def url(self) -> str:
        assert self.nats is not None
        return self.nats.url

    def env(self, **extra: str) -> dict[str, str]:
        o = self.opts
        # The services connect as `service` (the password in a 0600 file, not in the environment),
        # whatever TORUA_NATS_* the caller's environment holds for some other server.
        inherited = {k: v for k, v in os.environ.items() if k not in NATS_AUTH_VARIABLES}
        creds = (
            {"TORUA_NATS_USER": "service", "TORUA_NATS_PASSWORD_FILE": str(self.service_password_file)}
            if self.auth is not None
            else {}
        )
        env = {
            **inherited,
            **creds,
            "NATS_URL": self.url,
            "TORUA_NUM_SHARDS": str(o.shards),
            "TORUA_REPLICATION_FACTOR": str(o.replicas),
            "TORUA_HEARTBEAT_INTERVAL": str(o.heartbeat_interval),
            "TORUA_NODE_TIMEOUT": str(o.node_timeout),
            "TORUA_REASSIGN_DELAY": str(o.reassign_delay),
            **o.extra_env,
        }
        env.update(extra)
        return env

    def start_nats(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nats = start_nats_server(
            self.opts.data_dir / "nats", port=self.opts.port, log_file=self.logs / "nats.log",
            sync_interval=self.opts.nats_sync,
            authorization=self.auth.server_config() if self.auth is not None else None,
        )
        if self.auth is not None:
            self.auth.write_password("service", self.service_password_file)
            self.auth.write_auth_file(self.auth_file, self.nats.url)

    def _spawn(self, module: str, log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{log_name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start_coordinator(self, coordinator_id: str = "coordinator-1", **extra: str) -> subprocess.Popen[bytes]:
        self.coordinator = self._spawn(
            "torua_coordinator", coordinator_id, self.env(TORUA_COORDINATOR_ID=coordinator_id, **extra)
        )
        return self.coordinator

    def start_node(self, node_id: str, **extra: str) -> subprocess.Popen[bytes]:
        data = self.opts.data_dir / node_id
        env = self.env(TORUA_NODE_ID=node_id, TORUA_DATA_DIR=str(data), **extra)
        self.nodes[node_id] = self._spawn("torua_node", node_id, env)
        return self.nodes[node_id]

    def start(self) -> None:
        self.start_nats()
        self.start_coordinator()
        for i in range(1, self.opts.nodes + 1):
            self.start_node(f"node-{i}")

    def signal_node(self, node_id: str, sig: int) -> None:
        proc = self.nodes[node_id]
        if proc.poll() is None:
            proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        """Nodes first (SIGINT: a graceful stop that keeps their data), then the coordinator, then NATS."""
        procs = [p for p in self.nodes.values() if p.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGINT)
        _wait_all(procs, timeout)
        if self.coordinator is not None and self.coordinator.poll() is None:
            self.coordinator.send_signal(signal.SIGTERM)
            _wait_all([self.coordinator], timeout)
        if self.nats is not None:
            self.nats.stop()

    def exited(self) -> list[str]:
        dead = [name for name, p in self.nodes.items() if p.poll() is not None]
        if self.coordinator is not None and self.coordinator.poll() is not None:
            dead.append("coordinator")
        return dead


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _examples(url: str) -> str:
    server = f"--server {url} " if url != "nats://127.0.0.1:4222" else ""
    return "\n".join(
        [
            "Try:",
            f"  nats {server}req torua.cluster.info '{{}}'",
            f"  nats {server}req torua.cluster.nodes '{{}}'",
            f"  nats {server}req torua.cluster.shards '{{}}'",
            f"  nats {server}micro ls",
            f"  NATS_URL={url} torua status",
        ]
    )


def _auth_help(cluster: LocalCluster) -> str:
    """How to connect to a cluster started with --auth, without printing a password."""
    f, url = cluster.auth_file, cluster.url
    return "\n".join(
        [
            "Authentication is on: anonymous connections are refused. Credentials for the roles `client`",
            f"(data API) and `admin` (also cluster admin) are in {f} (readable by you only). Connect with:",
            f"  torua --auth-file {f} search Tidelamp                 # as client",
            f"  torua --auth-file {f} --role admin status             # as admin",
            f"  export NATS_URL={url} TORUA_NATS_USER=client",
            f"  export TORUA_NATS_PASSWORD=\"$(jq -r .users.client.password {f})\"",
            f"  nats --server {url} --user client --password \"$(jq -r .users.client.password {f})\" \\",
            "      req torua.cluster.info '{}'",
            "See docs/security.md.",
        ]
    )


async def _wait_green(url: str, timeout: float, auth: NatsAuth | None = None) -> str:
    async with await Client.connect(url, auth=auth) as client:
        await client.wait_for_state("green", timeout)
        info, nodes, shards = await asyncio.gather(client.cluster_info(), client.cluster_nodes(), client.cluster_shards())
        return status_text(info, nodes, shards)


def _load_sample(url: str, path: Path, auth: NatsAuth | None = None) -> None:
    """The first minute: load the sample corpus and show one retrieval; a failure leaves the cluster up."""
    from torua.sample import sample_demo  # the ingest pipeline: loaded only when asked for

    try:
        eventloop.run(sample_demo(url, path, auth=auth))
    except ToruaError as exc:
        print(f"warning: could not load the sample corpus: {exc.description}", file=sys.stderr)


def run_up(opts: UpOptions) -> int:
    cluster = LocalCluster(opts)
    stopping = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    started = time.monotonic()
    try:
        cluster.start()
        print(f"nats-server with JetStream on {cluster.url} (data in {opts.data_dir}, logs in {cluster.logs})")
        print(f"starting a coordinator and {opts.nodes} nodes: {opts.shards} shards x {opts.replicas} replicas ...")
        text = eventloop.run(_wait_green(cluster.url, 60.0, cluster.credentials("admin")))
        help_text = _auth_help(cluster) if cluster.auth is not None else _examples(cluster.url)
        print(f"\ncluster is green after {time.monotonic() - started:.1f}s\n\n{text}\n\n{help_text}")
        if opts.sample is not None:
            _load_sample(cluster.url, opts.sample, cluster.credentials("client"))
        print("\nCtrl-C stops every process.", flush=True)
        while not stopping:
            if dead := cluster.exited():
                print(f"warning: exited: {', '.join(dead)}; see {cluster.logs}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except Exception as exc:  # noqa: BLE001 - a readable line, then clean up
        print(f"torua up: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        cluster.stop()
        print("stopped.")
