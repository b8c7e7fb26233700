from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from torua.client import Client
from torua.up import LocalCluster, UpOptions

# Fast failure detection so the tests finish quickly; the behaviour is the same as in production.
FAST = dict(heartbeat_interval=0.2, node_timeout=1.5, reassign_delay=1.5)
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
# The installed console script beside this interpreter, as a user runs it.
_SCRIPT = Path(sys.executable).with_name("torua")
TORUA = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "torua.cli"]


@contextmanager
def running_cluster(data_dir: Path, *, nodes: int, shards: int, replicas: int, **env: str) -> Iterator[LocalCluster]:
    """A whole local cluster (real nats-server, coordinator and node processes), stopped afterwards."""
    opts = UpOptions(
        nodes=nodes, shards=shards, replicas=replicas, port=-1, data_dir=data_dir, extra_env=env, **FAST
    )
    cluster = LocalCluster(opts)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(timeout=10)


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
        c.stop(timeout=10)


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
