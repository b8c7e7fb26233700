"""Small writes and reads on a large shard: row by row against set-at-a-time (python -m bench.large_shard).

Fills one shard database with `--entities` entities (64-d embeddings) and twice as many relations,
then, on the same database, with `statements.run` choosing row by row (as it does) and forced
set-at-a-time, times:
- applying `--writes` single-entry batches, as a replica does for a trickle of small requests: each
  entry adds an entity, renames an existing one, adds a relation between existing entities,
  reweights an existing relation and puts a key;
- the edges of one entity in both directions (what `torua.graph.neighbors` asks of each shard);
- fetching 5 entities by id (`torua.graph.get`).
"""

from __future__ import annotations

import argparse
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import tempfile
import time
from pathlib import Path

import kuzu
import numpy as np
import pyarrow as pa

from torua_node.shard.apply import apply_batch
from torua_node.shard.wal import WalEntity, WalEntry, WalKV, WalRelation, encode_entry
from torua_node.storage import statements
from torua_node.storage.reads import edges, entities_by_ids
from torua_node.storage.schema import init_schema

DIM = 64


def fill(conn: kuzu.Connection, n: int) -> list[tuple[str, str]]:
    """COPY n entities and 2n relations (i -> i+1, i -> i+7); the relations' (source, target)."""
    ids = [f"e{i:07d}" for i in range(n)]
    vecs = np.random.default_rng(1).standard_normal((n, DIM)).astype("<f4")
    conn.execute("COPY Entity FROM $t", {"t": pa.table({
        "id": ids, "name": ids, "type": ["T"] * n, "description": [""] * n, "properties": ["{}"] * n,
        "embedding": pa.array([v.tobytes() for v in vecs], pa.binary()), "stub": pa.repeat(False, n)})})
    pairs = [(ids[i], ids[(i + step) % n]) for step in (1, 7) for i in range(n)]
    conn.execute("COPY RELATES FROM $t", {"t": pa.table({
        "from": [s for s, _ in pairs], "to": [t for _, t in pairs], "type": ["R"] * len(pairs),
        "weight": np.ones(len(pairs)), "properties": ["{}"] * len(pairs), "chunks": ["[]"] * len(pairs)})})
    return pairs


def small_entry(i: int, n: int, pairs: list[tuple[str, str]], vec: bytes) -> WalEntry:
    rng = np.random.default_rng(i)
    a, b = (f"e{x:07d}" for x in rng.integers(0, n, 2))
    s, t = pairs[int(rng.integers(0, len(pairs)))]
    return WalEntry(
        request_id=f"w{i}", ts=float(i),
        entities=[
            WalEntity(id=f"new{i:06d}", name="N", type="T", description="", properties="{}", embedding=vec),
            WalEntity(id=a, name=f"renamed {i}", type="T", description="", properties="{}", embedding=vec)],
        relations=[WalRelation(source=a, target=b, type=f"S{i}", weight=1.0, properties="{}", chunks=()),
                   WalRelation(source=s, target=t, type="R", weight=float(i), properties="{}", chunks=())],
        kv=[WalKV(key=f"key-{i}", value="v")])


def apply_each(conn: kuzu.Connection, entries: list[WalEntry], first_seq: int) -> list[float]:
    took = []
    for k, e in enumerate(entries):
        t0 = time.perf_counter()
        r = apply_batch(conn, [(first_seq + k, encode_entry(e))], DIM)
        took.append(time.perf_counter() - t0)
        assert r.applied == 1 and not r.failures, (r.failures, r.error)
    return took


def timed(fn, n: int) -> list[float]:
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        took.append(time.perf_counter() - t0)
    return took


def pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=300_000)
    p.add_argument("--writes", type=int, default=100)
    a = p.parse_args()
    vec = np.ones(DIM, "<f4").tobytes()
    with tempfile.TemporaryDirectory(prefix="torua-small-") as tmp:
        db = kuzu.Database(str(Path(tmp) / "shard"), buffer_pool_size=1 << 30, max_db_size=1 << 36,
                           max_num_threads=2)
        conn = kuzu.Connection(db)
        init_schema(conn, DIM)
        pairs = fill(conn, a.entities)
        apply_each(conn, [small_entry(0, a.entities, pairs, vec)], 1)  # learns the keys (one scan per table)
        results: dict[str, dict[str, list[float]]] = {}
        seq = 2
        n = a.entities
        for mode, keys_per_row in (("row by row", statements.KEYS_PER_ROW), ("set-at-a-time", 1 << 62)):
            statements.KEYS_PER_ROW = keys_per_row
            entries = [small_entry(seq + k, n, pairs, vec) for k in range(a.writes)]
            results[mode] = {
                "apply one small entry": apply_each(conn, entries, seq),
                "edges of one entity": timed(lambda i: edges(conn, [f"e{i * 7919 % n:07d}"], "both", None, 100),
                                             a.writes),
                "get 5 entities": timed(lambda i: entities_by_ids(
                    conn, [f"e{(i * 7919 + j) % n:07d}" for j in range(5)]), a.writes),
            }
            seq += a.writes
        conn.close()
        db.close()
    print(f"one shard of {n:,} entities and {2 * n:,} relations, {a.writes} of each operation:")
    for what in results["row by row"]:
        fast, slow = results["row by row"][what], results["set-at-a-time"][what]
        print(f"  {what:22s} row by row p50 {pct(fast, 0.5):6.2f} ms, p99 {pct(fast, 0.99):6.2f} ms;"
              f" set-at-a-time p50 {pct(slow, 0.5):7.2f} ms, p99 {pct(slow, 0.99):7.2f} ms"
              f" ({pct(slow, 0.5) / pct(fast, 0.5):.0f}x)")


if __name__ == "__main__":
    main()
