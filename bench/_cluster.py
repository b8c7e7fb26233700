"""Helpers shared by the benches that drive a local cluster (bench.ingest, bench.consistency, bench.query).

- `timed` / `p50_p95_ms`: sequential request latencies and their percentiles;
- `EchoPeer`, `echo_round_trips`: the floor of any read, a bare nats-py request-reply, to a
  subscriber in this process or in another one (`python -m bench._cluster echo URL` is that other
  process), one at a time or `n` in a row;
- `cluster_ingest`, `AppliedWatch`, `all_applied`: write batches with some requests in flight, then
  wait until every replica applied them (strong reads would otherwise wait for it while timed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from torua import Client, eventloop
from torua.ingest import upsert_waiting
from torua.model import Tokens
from torua.up import LocalCluster, UpOptions

__all__ = ["timed", "p50_p95_ms", "EchoPeer", "echo_round_trips", "cluster_ingest", "AppliedWatch", "all_applied"]

ECHO_SUBJECT = "bench.echo"


@contextlib.contextmanager
def local_cluster(args: argparse.Namespace, dim: int, prefix: str, stop_timeout: float = 15.0) -> Iterator[LocalCluster]:
    """A local cluster of `args.nodes` nodes and `args.shards` shards at R=`args.replicas`, embedding
    width `dim`, in a temporary directory; stopped on leaving."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        opts = UpOptions(nodes=args.nodes, shards=args.shards, replicas=args.replicas, port=-1, data_dir=Path(tmp),
                         extra_env={"TORUA_EMBEDDING_DIM": str(dim)})
        cluster = LocalCluster(opts)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop(timeout=stop_timeout)


def ready_state(args: argparse.Namespace) -> str:
    """The state a cluster of `args` reaches: green, or yellow when there are fewer nodes than replicas."""
    return "green" if args.nodes >= args.replicas else "yellow"


def p50_p95_ms(samples: list[float]) -> tuple[float, float]:
    """Median and 95th percentile of durations in seconds, in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    """Seconds taken by each of `n` sequential calls `call(0)`, ..., `call(n - 1)`."""
    out = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - started)
    return out


class EchoPeer:
    """A bare nats-py request-reply to an echo subscriber in this process or in another one: the
    floor of any read, one round trip at a time (`rtt`), so that a bench can take one beside each
    timed request and see the same machine as the request did."""

    def __init__(self, url: str, *, payload: bytes = b"{}", other_process: bool = False) -> None:
        self.url, self.payload, self.other_process = url, payload, other_process
        self._nc: nats.NATS | None = None
        self._child: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> EchoPeer:
        self._nc = await nats.connect(self.url)
        if self.other_process:
            self._child = subprocess.Popen([sys.executable, "-m", "bench._cluster", "echo", self.url], stdout=subprocess.PIPE)
            assert self._child.stdout is not None
            # The child prints a line once its subscription has reached the server.
            await asyncio.get_running_loop().run_in_executor(None, self._child.stdout.readline)
        else:

            async def echo(msg: Msg) -> None:
                await msg.respond(msg.data)

            await self._nc.subscribe(ECHO_SUBJECT, cb=echo)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._nc is not None:
            await self._nc.close()
        if self._child is not None:
            self._child.terminate()
            self._child.wait(10)

    async def rtt(self) -> float:
        """Seconds one request-reply took."""
        assert self._nc is not None
        started = time.perf_counter()
        await self._nc.request(ECHO_SUBJECT, self.payload, timeout=5)
        return time.perf_counter() - started


async def echo_round_trips(url: str, n: int, *, payload: bytes = b"{}", other_process: bool = False) -> list[float]:
    """`n` sequential nats-py request-replies to an echo subscriber, in this process or another."""
    async with EchoPeer(url, payload=payload, other_process=other_process) as peer:
        return [await peer.rtt() for _ in range(n)]


async def _serve_echo(url: str) -> None:
    nc = await nats.connect(url)

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(ECHO_SUBJECT, cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until terminated


async def cluster_ingest(client: Client, work: list[dict[str, Any]], concurrency: int) -> tuple[float, Tokens]:
    """Upsert every batch of `work` (keyword arguments of Client.upsert), `concurrency` in flight;
    returns the seconds until all were acknowledged and the highest token per shard."""
    tokens: Tokens = {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for w in work:
        queue.put_nowait(w)

    async def worker() -> None:
        while not queue.empty():
            # Replicas behind the log (TORUA_MAX_APPLY_LAG) refuse writes: wait as told, as `torua
            # ingest` does, rather than fail the run.
            reply = await upsert_waiting(client, **queue.get_nowait())
            for k, v in reply.tokens.items():
                tokens[k] = max(tokens.get(k, 0), v)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, tokens


async def all_applied(client: Client, tokens: Tokens) -> bool:
    for node in (await client.cluster_nodes()).nodes:
        for r in (await client.node_info(node.id)).replicas:
            if r["applied_seq"] < tokens.get(str(r["shard"]), 0):
                return False
    return True


class AppliedWatch:
    """Follows the replicas' `torua.shard.<n>.applied` notices. Polling node info instead would run
    count queries on every shard thread many times a second, slowing the apply being measured."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.changed = asyncio.Event()

    async def start(self, client: Client) -> None:
        await client.nc.subscribe("torua.shard.*.applied", cb=self._on_notice)

    async def _on_notice(self, msg: Msg) -> None:
        shard = msg.subject.split(".")[2]
        self.seen[shard] = max(self.seen.get(shard, 0), int(msg.data))
        self.changed.set()

    async def wait(self, client: Client, tokens: Tokens) -> None:
        while any(self.seen.get(s, 0) < seq for s, seq in tokens.items()):
            self.changed.clear()
            await self.changed.wait()
        # With replicas > 1 a notice speaks for one replica: confirm that every replica is there.
        while not await all_applied(client, tokens):
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    if sys.argv[1:2] != ["echo"] or len(sys.argv) != 3:
        sys.exit("usage: python -m bench._cluster echo NATS_URL")
    eventloop.run(_serve_echo(sys.argv[2]))
