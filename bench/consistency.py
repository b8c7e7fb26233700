"""What strong reads cost: the same reads at `"consistency": "strong"` (the default) and `"eventual"`.

    python -m bench.consistency [--nodes 3] [--shards 8] [--replicas 2] [--entities 2000] [--n 300]

Starts a local cluster (embedded nats-server on a free port, a coordinator and `--nodes` nodes, data
in a temporary directory), writes `--entities` entities in a ring of relations and as many KV keys,
waits until every replica applied them, then times `--n` sequential requests of each kind from one
client, side by side in one run:

- a bare NATS request-reply to a subscriber in this process (the floor of any read);
- `kv.get`, `graph.get` and 1-hop `graph.neighbors`, each strong and eventual, on distinct ids (so
  the router's result cache, which only eventual reads may use, cannot answer), and neighbours on
  one repeated id (where the cache answers eventual reads).

A strong read asks JetStream for the end of its shard's log before answering (docs/consistency.md),
so it costs about one JetStream round trip more than an eventual one. Prints p50 / p95 in ms and the
strong / eventual ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench._cluster import echo_round_trips, p50_p95_ms, timed
from torua import Client, eventloop
from torua.model import Entity, Relation, Tokens
from torua.up import LocalCluster, UpOptions

BATCH = 500


async def _load(client: Client, entities: int) -> Tokens:
    tokens: Tokens = {}
    ids = [f"b:{i}" for i in range(entities)]
    for start in range(0, entities, BATCH):
        part = ids[start : start + BATCH]
        reply = await client.upsert(
            entities=[Entity(id=i, name=f"Entity {i}", type="thing") for i in part],
            relations=[Relation(source=i, target=ids[(start + j + 1) % entities], type="NEXT") for j, i in enumerate(part)],
        )
        for k, v in reply.tokens.items():
            tokens[k] = max(tokens.get(k, 0), v)
    for i in range(entities):
        reply_kv = await client.kv_put(f"bench:{i}", f"value {i}")
        for k, v in (reply_kv.token or {}).items():
            tokens[k] = max(tokens.get(k, 0), v)
    return tokens


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="torua-bench-consistency-") as tmp:
        opts = UpOptions(nodes=args.nodes, shards=args.shards, replicas=args.replicas, port=-1, data_dir=Path(tmp))
        cluster = LocalCluster(opts)
        cluster.start()
        try:
            client = await Client.connect(cluster.url, request_timeout=10.0)
            try:
                await client.wait_for_state("green", timeout=60)
                tokens = await _load(client, args.entities)
                # Every replica has applied everything: both levels read the same data.
                await client.get("b:0", after=tokens)
                n, m = args.n, args.entities
                rows: list[tuple[str, list[float], list[float] | None]] = [("bare NATS request-reply", await echo_round_trips(cluster.url, n), None)]

                for name, strong, eventual in (
                    ("kv.get", lambda i: client.kv_get(f"bench:{i % m}"), lambda i: client.kv_get(f"bench:{(i + n) % m}", consistency="eventual")),
                    ("graph.get", lambda i: client.get(f"b:{i % m}"), lambda i: client.get(f"b:{(i + n) % m}", consistency="eventual")),
                    (
                        "neighbors, 1 hop, distinct ids",
                        lambda i: client.neighbors([f"b:{(2 * n + i) % m}"], hops=1),
                        lambda i: client.neighbors([f"b:{(3 * n + i) % m}"], hops=1, consistency="eventual"),
                    ),
                    (
                        "neighbors, 1 hop, one repeated id",
                        lambda i: client.neighbors(["b:1"], hops=1),
                        lambda i: client.neighbors(["b:1"], hops=1, consistency="eventual"),
                    ),
                ):
                    rows.append((name, await timed(n, strong), await timed(n, eventual)))
            finally:
                await client.close()
        finally:
            cluster.stop()
    print(f"\n{args.nodes} nodes, {args.shards} shards, R={args.replicas}; {args.entities} entities; {args.n} sequential requests each; p50 / p95 ms\n")
    print(f"{'read':36} {'strong':>16} {'eventual':>16} {'strong/eventual':>16}")
    for label, strong_s, eventual_s in rows:
        s50, s95 = p50_p95_ms(strong_s)
        if eventual_s is None:
            print(f"{label:36} {s50:7.2f} / {s95:6.2f}")
            continue
        e50, e95 = p50_p95_ms(eventual_s)
        print(f"{label:36} {s50:7.2f} / {s95:6.2f} {e50:7.2f} / {e95:6.2f} {s50 / e50:15.2f}x")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--entities", type=int, default=2000)
    p.add_argument("--n", type=int, default=300)
    eventloop.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
