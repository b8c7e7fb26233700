"""Multi-hop Cypher through the cluster, beside embedded Kuzu holding the same data in one database.

    python -m bench.cypher [--entities 5000] [--relations 20000] [--nodes 3] [--shards 8]
                           [--replicas 1] [--requests 20] [--runs 3]
    make bench-cypher BENCH_ARGS="--entities 20000 --relations 80000"

Generates the graph of `bench.query` (fixed seed: random relations between entities, six types),
loads it through `torua.graph.upsert`, waits until every replica applied it, then times, through
`torua.graph.query` (strong reads) and on one embedded Kuzu database in this process:

- whole-graph pattern counts: 2 and 3 hops (`(a)-[:RELATES]->(b)-[:RELATES]->(c)`, ...), `--runs`
  times each — every relation is gathered, hop by hop, from every shard;
- anchored pattern counts: 2 and 3 hops from one entity (`{id: $id}`), `--requests` distinct ids,
  and a pipeline from one entity (`MATCH ... WITH b, count(*) AS k OPTIONAL MATCH (b)-->(c) ...`);
- shortest paths: `-[:RELATES* SHORTEST 1..4]-` between two random entities, `--requests` pairs.

Prints p50 (p95) milliseconds of both sides and the ratio Torua / Kuzu, and checks every answer of
the cluster equals Kuzu's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kuzu
import numpy as np
import pyarrow as pa

from bench._cluster import AppliedWatch, cluster_ingest, local_cluster, p50_p95_ms, ready_state
from bench.query import _REL_TYPES, Data, graph_batches, make_data
from torua import Client

SEED = 11
WHOLE = {
    "2-hop count, whole graph": "MATCH (a:Entity)-[:RELATES]->(b:Entity)-[:RELATES]->(c:Entity) RETURN count(*)",
    "3-hop count, whole graph": "MATCH (a:Entity)-[:RELATES]->(b:Entity)-[:RELATES]->(c:Entity)-[:RELATES]->(d:Entity)"
                                " RETURN count(*)",
}
ANCHORED = {
    "2-hop count from one id": "MATCH (a:Entity {id: $id})-[:RELATES]->(b:Entity)-[:RELATES]->(c:Entity) RETURN count(*)",
    "3-hop count from one id": "MATCH (a:Entity {id: $id})-[:RELATES]->(b:Entity)-[:RELATES]->(c:Entity)"
                               "-[:RELATES]->(d:Entity) RETURN count(*)",
    "2-hop rows from one id": "MATCH (a:Entity {id: $id})-[r:RELATES]->(b:Entity)<-[s:RELATES]-(c:Entity)"
                              " RETURN b.name, c.name, r.type, s.type",
    "WITH + OPTIONAL MATCH from one id": "MATCH (a:Entity {id: $id})-[:RELATES]->(b:Entity) WITH b, count(*) AS k"
                                         " OPTIONAL MATCH (b)-[:RELATES]->(c:Entity) WHERE c.type = b.type"
                                         " RETURN b.id, k, count(c)",
}
SHORTEST = ("shortest path (undirected, <= 4 hops)",
            "MATCH p = (a:Entity {id: $id})-[:RELATES* SHORTEST 1..4]-(b:Entity {id: $to}) RETURN length(p)")


def canon(rows: list[list[Any]]) -> list[list[Any]]:
    return sorted(rows, key=repr)


def kuzu_side(d: Data, cases: list[tuple[str, str, list[dict[str, Any]]]]) -> dict[str, tuple[list[float], list[Any]]]:
    """Each case on one embedded Kuzu database: seconds and rows per request."""
    out: dict[str, tuple[list[float], list[Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="torua-bench-cypher-kuzu-") as tmp:
        db = kuzu.Database(str(Path(tmp) / "g"), buffer_pool_size=1 << 30, max_db_size=1 << 36)
        conn = kuzu.Connection(db)
        conn.execute("CREATE NODE TABLE Entity(id STRING PRIMARY KEY, name STRING, type STRING)")
        conn.execute("CREATE REL TABLE RELATES(FROM Entity TO Entity, type STRING, weight DOUBLE)")
        conn.execute("COPY Entity FROM $t", {"t": pa.table({"id": d.ids, "name": d.names, "type": d.types})})
        # Torua keeps one relation per (source, type, target): so does the reference.
        rels = sorted({(d.ids[a], _REL_TYPES[t], d.ids[b])
                       for a, t, b in zip(d.src.tolist(), d.rel_type.tolist(), d.dst.tolist())})
        conn.execute("COPY RELATES FROM $t", {"t": pa.table({
            "from": [r[0] for r in rels], "to": [r[2] for r in rels], "type": [r[1] for r in rels],
            "weight": np.ones(len(rels))})})
        for name, cypher, params in cases:
            conn.execute(cypher, params[0])  # warm up
            samples, rows = [], []
            for p in params:
                t = time.perf_counter()
                result = conn.execute(cypher, p)
                assert isinstance(result, kuzu.QueryResult)
                rows.append(canon(result.get_all()))
                samples.append(time.perf_counter() - t)
            out[name] = (samples, rows)
        conn.close()
        db.close()
    return out


async def cluster_side(d: Data, cases: list[tuple[str, str, list[dict[str, Any]]]],
                       args: argparse.Namespace) -> tuple[dict[str, tuple[list[float], list[Any]]], float]:
    out: dict[str, tuple[list[float], list[Any]]] = {}
    with local_cluster(args, d.vecs.shape[1], "torua-bench-cypher-", stop_timeout=20) as cluster:
        async with await Client.connect(cluster.url, request_timeout=300) as client:
            await client.wait_for_state(ready_state(args), 90)
            watch = AppliedWatch()
            await watch.start(client)
            t0 = time.perf_counter()
            _, tokens = await cluster_ingest(client, graph_batches(d, 1000, 5000), 4)
            await watch.wait(client, tokens)
            load_s = time.perf_counter() - t0
            for name, cypher, params in cases:
                await client.query(cypher, params[0], timeout_ms=120_000)  # warm up
                samples, rows = [], []
                for p in params:
                    t = time.perf_counter()
                    reply = await client.query(cypher, p, timeout_ms=120_000)
                    samples.append(time.perf_counter() - t)
                    assert not reply.partial, name
                    rows.append(canon(reply.rows))
                out[name] = (samples, rows)
    return out, load_s


def _fmt(samples: list[float]) -> str:
    p50, p95 = p50_p95_ms(samples)
    return f"{p50:9.1f} ({p95:8.1f})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=5000)
    ap.add_argument("--relations", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    d = make_data(args.entities, args.relations, 0, args.dim, SEED)
    rng = np.random.default_rng(SEED)
    picks = rng.choice(len(d.ids), size=(args.requests, 2)).tolist()
    cases: list[tuple[str, str, list[dict[str, Any]]]] = [(n, q, [{}] * args.runs) for n, q in WHOLE.items()]
    cases += [(n, q, [{"id": d.ids[a]} for a, _b in picks]) for n, q in ANCHORED.items()]
    cases.append((SHORTEST[0], SHORTEST[1], [{"id": d.ids[a], "to": d.ids[b]} for a, b in picks]))
    ref = kuzu_side(d, cases)
    got, load_s = asyncio.run(cluster_side(d, cases, args))
    print(f"\nmulti-hop Cypher: {args.entities} entities, {args.relations} relations, {args.nodes} nodes,"
          f" {args.shards} shards, {args.replicas} replica(s); graph loaded and applied in {load_s:.1f} s")
    print(f"{'query':40} {'Torua p50 (p95) ms':>20} {'Kuzu p50 (p95) ms':>20} {'ratio':>7}  answer")
    show: Callable[[list[Any]], str] = lambda rows: str(rows[0][0][0]) if rows and rows[0] and rows[0][0] else "-"  # noqa: E731
    for name, _q, _p in cases:
        t_s, t_rows = got[name]
        k_s, k_rows = ref[name]
        ratio = float(np.median(t_s) / np.median(k_s))
        equal = "equal" if t_rows == k_rows else "DIFFERENT"
        print(f"{name:40} {_fmt(t_s):>20} {_fmt(k_s):>20} {ratio:7.1f}  {show(t_rows)} ({equal})")


if __name__ == "__main__":
    main()
