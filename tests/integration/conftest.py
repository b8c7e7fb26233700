from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from torua import auth as torua_auth
from torua.client import Client
from torua.up import LocalCluster, UpOptions

# Fast failure detection so the tests finish quickly; the behaviour is the same as in production.
FAST = dict(heartbeat_interval=0.2, node_timeout=1.5, reassign_delay=1.5)
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
# The installed console script beside this interpreter, as a user runs it.
_SCRIPT = Path(sys.executable).with_name("torua")
TORUA = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "torua.cli"]


def _group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process in process group `pgid` (Linux /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                members.append((int(entry), Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")))
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return members


def discard(cluster: LocalCluster) -> None:
    """Teardown of a cluster whose data is thrown away: SIGKILL its processes, then stop NATS.

    A graceful stop (LocalCluster.stop) costs 0.3-3 s per cluster and no teardown checks it
    (test_restarts and test_membership test graceful stops). Each service leads its own process
    group (start_new_session), so its query worker processes are killed with it; multiprocessing's
    resource tracker is spared: it sees its parent gone and unlinks the pool's semaphores."""
    procs = [p for p in (*cluster.nodes.values(), cluster.coordinator) if p is not None and p.poll() is None]
    for p in procs:
        for pid, cmdline in _group_members(p.pid):
            if "multiprocessing.resource_tracker" in cmdline:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in procs:
        p.wait()
    if cluster.nats is not None:
        cluster.nats.stop()


@contextmanager
def running_cluster(
    data_dir: Path, *, nodes: int, shards: int, replicas: int, options: dict[str, Any] | None = None, **env: str
) -> Iterator[LocalCluster]:
    """A whole local cluster (real nats-server, coordinator and node processes), stopped afterwards.
    `options`: UpOptions fields beside (or instead of) the fast failure detection."""
    opts = UpOptions(
        nodes=nodes, shards=shards, replicas=replicas, port=-1, data_dir=data_dir, extra_env=env,
        **{**FAST, **(options or {})},
    )
    cluster = LocalCluster(opts)
    cluster.start()
    try:
        yield cluster
    finally:
        discard(cluster)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    clusters: list[LocalCluster] = []

    def make(nodes: int = 3, shards: int = 8, replicas: int = 2, **extra_env: str) -> LocalCluster:
        opts = UpOptions(
            nodes=nodes, shards=shards, replicas=replicas, port=-1, data_dir=tmp_path / f"c{len(clusters)}",
            extra_env=extra_env, **FAST,
        )
        cluster = LocalCluster(opts)
        clusters.append(cluster)
        return cluster

    yield make
    for c in clusters:
        discard(c)


@pytest.fixture
async def cluster(make_cluster) -> AsyncIterator[LocalCluster]:
    c = make_cluster()
    c.start()
    yield c


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[Client]:
    c = await Client.connect(cluster.url, request_timeout=5.0)
    yield c
    await c.close()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One small cluster for a whole module of tests that do not kill anything."""
    with running_cluster(tmp_path_factory.mktemp("shared"), nodes=2, shards=4, replicas=2) as cluster:
        yield cluster


@contextmanager
def legacy_admin_cluster(data_dir: Path, *, shards: int) -> Iterator[LocalCluster]:
    """`torua up --auth` with one node, except that the admin role keeps the permissions from before
    direct reads (no `torua.shard.*` at all), as a server configured by an older version would."""
    opts = UpOptions(nodes=1, shards=shards, replicas=1, port=-1, data_dir=data_dir, auth=True, **FAST)
    cluster = LocalCluster(opts)
    new = torua_auth.PERMISSIONS["admin"]
    old = torua_auth.Permissions(
        publish_allow=tuple(s for s in new.publish_allow if not s.startswith("torua.shard.")),
        publish_deny=torua_auth.SERVICE_ONLY,
        subscribe_allow=new.subscribe_allow,
        subscribe_deny=new.subscribe_deny,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(torua_auth.PERMISSIONS, "admin", old)
        cluster.start()  # the server's configuration is rendered here
    try:
        yield cluster
    finally:
        cluster.stop(timeout=10)


@asynccontextmanager
async def direct_routed_writer(cluster: LocalCluster) -> AsyncIterator[tuple[Client, Client, Client]]:
    """Three connections to `cluster`, once it is green: direct reads (the client's default), reads
    through the routers (`direct_reads=False`), and a writer."""
    direct = await Client.connect(cluster.url, request_timeout=10)
    routed = await Client.connect(cluster.url, request_timeout=10, direct_reads=False)
    writer = await Client.connect(cluster.url, request_timeout=10)
    try:
        await writer.wait_for_state("green", 60)
        yield direct, routed, writer
    finally:
        for c in (direct, routed, writer):
            await c.close()
