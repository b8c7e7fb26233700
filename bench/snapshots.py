"""Snapshots and log retention: snapshot and restore throughput, and how long a wiped replica takes
to recover against the length of the shard's history, replaying the log or restoring a snapshot.

    python -m bench.snapshots [--entities 2000] [--rounds 4] [--batch 20] [--multipliers 1,2,4] [--shards 2]

For each multiplier k, a fresh local cluster (1 node holding every shard, R1) is written the same
`--entities` entities `k * --rounds` times over (the content stays the same size, the history
grows), then:

1. replay: the node is stopped, its data directory wiped, and it is started again; timed from the
   start of the process until every replica is active at the end of the log (no snapshot exists,
   so every replica replays the whole log);
2. `torua.cluster.snapshot` (timed; snapshot MB/s = bytes of all shards' snapshots / that time),
   the log purged below the snapshots;
3. restore: wiped and started again, timed the same way; the node's log says how long each
   download and check took (restore MB/s).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

from torua import Client
from torua.model import Entity
from torua.subjects import CLUSTER_SNAPSHOT, WAL_STREAM
from torua.up import LocalCluster, UpOptions

from bench._cluster import all_applied, cluster_ingest

ENV = dict(TORUA_PURGE_MARGIN="0", TORUA_PURGE_INTERVAL="0.5", TORUA_SNAPSHOT_EVERY="0", TORUA_REASSIGN_DELAY="600")
NODE = "node-1"
_RESTORED = re.compile(r"shard (\d+) restored from snapshot at log position \d+ \((\d+) bytes\) in ([\d.]+)s")


async def _caught_up(client: Client) -> None:
    tokens = await client.latest_tokens()
    while True:
        try:
            info = await client.node_info(NODE)
            if info.replicas and all(r["state"] == "active" for r in info.replicas) and await all_applied(client, tokens):
                return
        except Exception:  # noqa: BLE001 - the node is still starting
            pass
        await asyncio.sleep(0.05)


async def _recover(cluster: LocalCluster, client: Client) -> float:
    cluster.signal_node(NODE, signal.SIGTERM)
    cluster.nodes[NODE].wait(30)
    shutil.rmtree(cluster.opts.data_dir / NODE)
    started = time.perf_counter()
    cluster.start_node(NODE)
    await _caught_up(client)
    return time.perf_counter() - started


def _restore_figures(log_file: Path, since: int) -> tuple[int, float]:
    """Bytes restored and seconds spent downloading and checking, from the node's log lines after
    byte offset `since`."""
    text = log_file.read_text(errors="replace")[since:]
    found = [(int(b), float(s)) for _, b, s in _RESTORED.findall(text)]
    return sum(b for b, _ in found), sum(s for _, s in found)


async def one(k: int, args: argparse.Namespace, root: Path) -> None:
    opts = UpOptions(nodes=1, shards=args.shards, replicas=1, port=-1, data_dir=root / f"k{k}", extra_env=ENV,
                     heartbeat_interval=0.2, node_timeout=1.5)
    cluster = LocalCluster(opts)
    cluster.start()
    try:
        async with await Client.connect(cluster.url, request_timeout=60) as client:
            await client.wait_for_state("green", 60)
            ids = [f"e{i}" for i in range(args.entities)]
            work = [{"entities": [Entity(id=e, name=f"{e} v{r}", description=f"round {r} " + "x" * 100)
                                  for e in ids[i:i + args.batch]]}
                    for r in range(k * args.rounds) for i in range(0, len(ids), args.batch)]
            ingest_s, _ = await cluster_ingest(client, work, concurrency=8)
            await _caught_up(client)
            js = client.nc.jetstream()
            history = (await js.stream_info(WAL_STREAM)).state
            replay_s = await _recover(cluster, client)

            t = time.perf_counter()
            reply = await client.request(CLUSTER_SNAPSHOT, {}, timeout=600)
            snap_s = time.perf_counter() - t
            snap_bytes = sum(s["bytes"] for s in reply["shards"])
            deadline = time.monotonic() + 30
            while (await js.stream_info(WAL_STREAM)).state.first_seq <= 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            kept = (await js.stream_info(WAL_STREAM)).state
            log_file = cluster.logs / f"{NODE}.log"
            offset = len(log_file.read_text(errors="replace"))
            restore_s = await _recover(cluster, client)
            r_bytes, r_s = _restore_figures(log_file, offset)
        print(f"{k:>3}x {history.messages:>10,} {history.bytes / 1e6:>9.1f} {kept.messages:>9,} "
              f"{snap_bytes / 1e6:>9.1f} {snap_s:>8.2f} {snap_bytes / 1e6 / snap_s:>8.0f} "
              f"{(r_bytes / 1e6 / r_s) if r_s else 0:>9.0f} {replay_s:>9.2f} {restore_s:>9.2f}"
              f"   (ingest {ingest_s:.1f}s)", flush=True)
    finally:
        cluster.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entities", type=int, default=2000, help="distinct entities, rewritten every round")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of rewrites at 1x history")
    ap.add_argument("--batch", type=int, default=20, help="entities per upsert request (small: many log entries)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--multipliers", default="1,2,4", help="history lengths, in multiples of --rounds")
    args = ap.parse_args()
    print(f"{args.entities} entities rewritten {args.rounds} x k times; 1 node, {args.shards} shards, R1\n")
    print(f"{'hist':>4} {'log msgs':>10} {'log MB':>9} {'kept msgs':>9} {'snap MB':>9} {'snap s':>8} "
          f"{'snap MB/s':>8} {'rest MB/s':>9} {'replay s':>9} {'restore s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(x) for x in args.multipliers.split(",")):
            await one(k, args, Path(tmp))
    print("\nreplay s / restore s: from starting the wiped node's process until its replicas are active at the "
          "log's end (process start included).")


if __name__ == "__main__":
    asyncio.run(main())
