"""What durable acknowledgements cost: JetStream's `sync_interval: always` against its default.

    python -m bench.durability [--small 2000] [--large 300] [--cluster-writes 300] [--skip-r3]

With `sync_interval: always` JetStream fsyncs every stored message before acknowledging it, so an
acknowledged write survives an OS crash or power loss of the server (what `torua up` and the
compose configs use); the default (fsync every 2 minutes) relies on other servers for that.
Measured on the log stream itself (a stream configured as TORUA_WAL, at R1 on one server and at R3
on three local servers) and through a whole local cluster (1 node, 8 shards, R1):

- acknowledged publish latency, one at a time (p50 / p99), of a small entry (300 B, a kv.put);
- acknowledged publishes per second with 32 small entries in flight, and MB/s with 4 large
  entries (256 KiB, a bulk write's share of one shard) in flight;
- through the cluster: `kv.put` latency one at a time, and entities/s written by `graph.upsert` with
  4 requests of 500 entities in flight.

Everything runs on this machine: the figures depend on its disk's fsync latency.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from torua import Client
from torua.model import Entity
from torua.natsserver import MAX_PAYLOAD, find_nats_server, start_nats_server
from torua.streams import DUPLICATE_WINDOW_S
from torua.up import LocalCluster, UpOptions

SMALL = 300
LARGE = 256 * 1024
SYNCS = (None, "always")  # the server's default, and the durable setting


@dataclass
class Figures:
    p50_ms: float
    p99_ms: float
    small_per_s: float
    large_mb_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _three_servers(root: Path, sync: str | None) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """A local three-server JetStream cluster (the compose `cluster` profile's shape)."""
    client_ports = [_free_port() for _ in range(3)]
    route_ports = [_free_port() for _ in range(3)]
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
    procs = []
    for i in range(3):
        d = root / f"n{i + 1}"
        d.mkdir(parents=True)
        conf = d / "nats.conf"
        conf.write_text("\n".join([
            f"server_name: n{i + 1}",
            f"listen: 127.0.0.1:{client_ports[i]}",
            f"max_payload: {MAX_PAYLOAD}",
            "max_pending: 128MB",
            "jetstream {",
            f'  store_dir: "{d / "js"}"',
            "  max_memory_store: 256MB",
            *([f"  sync_interval: {sync}"] if sync else []),
            "}",
            "cluster {",
            "  name: bench",
            f"  listen: 127.0.0.1:{route_ports[i]}",
            f"  routes: [{routes}]",
            "}",
        ]) + "\n")
        log = open(d / "nats.log", "ab")  # noqa: SIM115 - the child keeps it
        procs.append(subprocess.Popen([find_nats_server(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT))
    return procs, [f"nats://127.0.0.1:{p}" for p in client_ports]


async def _quiet(_: Exception) -> None:
    pass  # servers still starting: connect retries


async def _stream(url: str | list[str], replicas: int) -> nats.NATS:
    deadline = time.monotonic() + 30
    nc = await nats.connect(servers=url, error_cb=_quiet, allow_reconnect=True, connect_timeout=2,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    while True:  # a fresh cluster needs a few seconds to elect its meta leader
        try:
            await js.add_stream(StreamConfig(
                name="BENCH_WAL", subjects=["bench.wal.>"], retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE, discard=DiscardPolicy.NEW, num_replicas=replicas,
                duplicate_window=DUPLICATE_WINDOW_S, max_msg_size=MAX_PAYLOAD,
            ))
            return nc
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _publish_figures(nc: nats.NATS, small: int, large: int) -> Figures:
    js = nc.jetstream()
    payload = b"x" * SMALL
    for i in range(50):  # warm up
        await js.publish(f"bench.wal.{i % 8}", payload)
    lat = []
    for i in range(small):
        t = time.perf_counter()
        await js.publish(f"bench.wal.{i % 8}", payload)
        lat.append(time.perf_counter() - t)
    lat.sort()

    async def flood(n: int, size: int, in_flight: int) -> float:
        body = b"y" * size
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                await js.publish(f"bench.wal.{i % 8}", body)

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t

    small_s = await flood(small, SMALL, 32)
    large_s = await flood(large, LARGE, 4)
    return Figures(statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3, small / small_s,
                   large * LARGE / large_s / 1e6)


async def stream_figures(sync: str | None, replicas: int, small: int, large: int) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        if replicas == 1:
            server = start_nats_server(Path(tmp) / "nats", sync_interval=sync)
            try:
                nc = await _stream(server.url, 1)
                try:
                    return await _publish_figures(nc, small, large)
                finally:
                    await nc.close()
            finally:
                server.stop()
        procs, url = _three_servers(Path(tmp), sync)
        try:
            nc = await _stream(url, 3)
            try:
                return await _publish_figures(nc, small, large)
            finally:
                await nc.close()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)


async def cluster_figures(sync: str | None, writes: int) -> tuple[float, float, float]:
    """kv.put p50 / p99 (ms) one at a time, and entities/s upserted with 4 x 500 in flight."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(UpOptions(nodes=1, shards=8, replicas=1, port=-1, data_dir=Path(tmp), nats_sync=sync))
        cluster.start()
        try:
            async with await Client.connect(cluster.url, request_timeout=30) as client:
                await client.wait_for_state("green", 60)
                for i in range(20):
                    await client.kv_put(f"warm-{i}", "v")
                lat = []
                for i in range(writes):
                    t = time.perf_counter()
                    await client.kv_put(f"key-{i}", "value")
                    lat.append(time.perf_counter() - t)
                lat.sort()
                n_req, per = 40, 500
                sem = asyncio.Semaphore(4)

                async def upsert(r: int) -> None:
                    async with sem:
                        await client.upsert(entities=[
                            Entity(id=f"e{r}-{j}", name=f"entity {r} {j}", embedding=[float(j % 7)] * 64)
                            for j in range(per)])

                t = time.perf_counter()
                await asyncio.gather(*(upsert(r) for r in range(n_req)))
                rate = n_req * per / (time.perf_counter() - t)
            return statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3, rate
        finally:
            cluster.stop()


def _name(sync: str | None) -> str:
    return "always (durable)" if sync else "default (2 min)"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=2000, help="small publishes per measurement")
    ap.add_argument("--large", type=int, default=300, help="256 KiB publishes per measurement")
    ap.add_argument("--cluster-writes", type=int, default=300, help="kv.put requests through the cluster")
    ap.add_argument("--skip-r3", action="store_true", help="leave out the three-server cluster")
    args = ap.parse_args()
    print("JetStream, the log stream alone:")
    print(f"{'servers':<10}{'sync_interval':<20}{'publish p50 / p99':>20}{'small/s (32 in flight)':>25}"
          f"{'MB/s (4 x 256 KiB)':>20}")
    shapes = [1] if args.skip_r3 else [1, 3]
    for replicas in shapes:
        for sync in SYNCS:
            f = await stream_figures(sync, replicas, args.small, args.large)
            label = "1, R1" if replicas == 1 else "3, R3"
            print(f"{label:<10}{_name(sync):<20}{f'{f.p50_ms:.2f} / {f.p99_ms:.2f} ms':>20}"
                  f"{f.small_per_s:>25,.0f}{f.large_mb_s:>20.1f}", flush=True)
    print("\nThrough a local cluster (1 node, 8 shards, R1):")
    print(f"{'sync_interval':<20}{'kv.put p50 / p99':>20}{'upsert entities/s':>20}")
    for sync in SYNCS:
        p50, p99, rate = await cluster_figures(sync, args.cluster_writes)
        print(f"{_name(sync):<20}{f'{p50:.2f} / {p99:.2f} ms':>20}{rate:>20,.0f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
