"""Ingest throughput through the cluster vs embedded Kuzu COPY, on the same data, in one run.

    python -m bench.ingest [--entities 50000] [--relations 250000] [--nodes 1 3] [--replicas 1]

Prints rows/s for embedded Kuzu COPY (no vector index) and for the cluster (1 and 3 nodes, 8
shards), both when every write is acknowledged (stored in the write-ahead log) and when every
replica has applied it, the ratio to embedded COPY, and acknowledged single-write latency.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import tempfile
import time
from pathlib import Path

import kuzu
import numpy as np
import pyarrow as pa

from bench._cluster import AppliedWatch, cluster_ingest
from torua import Client
from torua.model import Entity, Relation
from torua.up import LocalCluster, UpOptions

DIM = 64


def make_data(n_ent: int, n_rel: int, seed: int = 1) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"e{i:07d}" for i in range(n_ent)]
    vecs = rng.standard_normal((n_ent, DIM)).astype(np.float32)
    src = rng.integers(0, n_ent, n_rel)
    dst = (src + rng.integers(1, n_ent, n_rel)) % n_ent  # never a self-loop
    return ids, vecs, src, dst


def embedded_copy(ids: list[str], vecs: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[float, float]:
    """Seconds to COPY the entities and the relations into one fresh embedded Kuzu database."""
    with tempfile.TemporaryDirectory() as tmp:
        db = kuzu.Database(str(Path(tmp) / "g"), buffer_pool_size=1 << 30, max_db_size=1 << 36)
        conn = kuzu.Connection(db)
        conn.execute(
            f"CREATE NODE TABLE Entity(id STRING PRIMARY KEY, name STRING, embedding FLOAT[{DIM}])"
        )
        conn.execute("CREATE REL TABLE RELATES(FROM Entity TO Entity, type STRING, weight DOUBLE)")
        ents = pa.table(
            {
                "id": ids,
                "name": ids,
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM),
            }
        )
        rels = pa.table(
            {
                "from": pa.array([ids[i] for i in src]),
                "to": pa.array([ids[i] for i in dst]),
                "type": pa.array(["LINKS"] * len(src)),
                "weight": pa.array(np.ones(len(src))),
            }
        )
        t0 = time.perf_counter()
        conn.execute("COPY Entity FROM $t", {"t": ents})
        t1 = time.perf_counter()
        conn.execute("COPY RELATES FROM $t", {"t": rels})
        t2 = time.perf_counter()
        conn.close()
        db.close()
    return t1 - t0, t2 - t1


def batches(ids, vecs, src, dst, ent_batch: int, rel_batch: int):
    for i in range(0, len(ids), ent_batch):
        yield {"entities": [Entity(id=ids[j], name=ids[j], embedding=vecs[j].tolist()) for j in range(i, min(i + ent_batch, len(ids)))]}
    for i in range(0, len(src), rel_batch):
        yield {"relations": [Relation(source=ids[a], target=ids[b], type="LINKS") for a, b in zip(src[i : i + rel_batch], dst[i : i + rel_batch])]}


async def single_write_latency(client: Client, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await client.upsert(entities=[Entity(id=f"lat-{i}", name="latency probe")])
        out.append(time.perf_counter() - t0)
    return out


def pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000


async def run_cluster(nodes: int, replicas: int, data, args) -> dict[str, float]:
    ids, vecs, src, dst = data
    with tempfile.TemporaryDirectory() as tmp:
        opts = UpOptions(nodes=nodes, shards=8, replicas=replicas, port=-1, data_dir=Path(tmp),
                         extra_env={"TORUA_BUFFER_POOL_MB": "256", "TORUA_EMBEDDING_DIM": str(DIM)})
        cluster = LocalCluster(opts)
        cluster.start()
        try:
            async with await Client.connect(cluster.url, request_timeout=120) as client:
                await client.wait_for_state("green" if nodes >= replicas else "yellow", 60)
                work = list(batches(ids, vecs, src, dst, args.entity_batch, args.relation_batch))
                watch = AppliedWatch()
                await watch.start(client)
                t0 = time.perf_counter()
                acked_s, tokens = await cluster_ingest(client, work, args.concurrency)
                await watch.wait(client, tokens)
                applied_s = time.perf_counter() - t0
                probe = await client.search_vector(vector=vecs[7].tolist(), k=1, target="entities", after=tokens)
                assert probe.hits and probe.hits[0].id == ids[7], "new vectors must be searchable once applied"
                lat = await single_write_latency(client, args.latency_writes)
        finally:
            cluster.stop()
    rows = len(ids) + len(src)
    return {"acked": rows / acked_s, "applied": rows / applied_s, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=50_000)
    p.add_argument("--relations", type=int, default=250_000)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--entity-batch", type=int, default=2000)
    p.add_argument("--relation-batch", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--latency-writes", type=int, default=300)
    args = p.parse_args()
    data = make_data(args.entities, args.relations)
    ent_s, rel_s = embedded_copy(*data)
    rows = args.entities + args.relations
    base = rows / (ent_s + rel_s)
    print(f"data: {args.entities} entities with {DIM}-d embeddings, {args.relations} relations")
    print(f"embedded Kuzu COPY: entities {args.entities / ent_s:,.0f} rows/s, relations {args.relations / rel_s:,.0f} rows/s, "
          f"all {base:,.0f} rows/s")
    ent_rate = args.entities / ent_s
    for nodes in args.nodes:
        r = asyncio.run(run_cluster(nodes, min(args.replicas, nodes), data, args))
        print(
            f"cluster {nodes} node(s), 8 shards, R={min(args.replicas, nodes)}: "
            f"acknowledged {r['acked']:,.0f} rows/s ({r['acked'] / base:.2f}x embedded all rows, "
            f"{r['acked'] / ent_rate:.2f}x embedded entities), "
            f"applied {r['applied']:,.0f} rows/s ({r['applied'] / base:.2f}x, {r['applied'] / ent_rate:.2f}x); "
            f"single write p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms"
        )


if __name__ == "__main__":
    main()
