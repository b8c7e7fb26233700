"""Where a replica's apply time goes: the ingest benchmark's per-shard logs, replayed on one thread.

    python -m bench.replay [--batch 64]

Splits the data of `bench.ingest` (50k entities with 64-d embeddings, 250k relations, requests of
2,000 entities or 10,000 relations) into WAL entries for 8 shards exactly as the router does, then
applies each shard's log with `apply_batch` in batches of `--batch` entries, one shard after
another, and prints the time and CPU spent, and the time per Kuzu statement.
"""

from __future__ import annotations

import argparse
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import re
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any

import kuzu
import msgspec

from bench.ingest import DIM, batches, make_data
from torua.model import UpsertRequest
from torua_node.router.split import split_upsert
from torua_node.shard.apply import apply_batch
from torua_node.shard.wal import encode_entry
from torua_node.storage.schema import init_schema

SHARDS = 8


class _GivenVectors:
    """Every row of the benchmark carries its embedding: nothing is ever embedded."""

    dim = DIM

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise AssertionError("the benchmark gives every embedding")


class TimedConnection:
    """A connection that adds up the time spent in each statement."""

    def __init__(self, conn: kuzu.Connection, spent: Counter[str], calls: Counter[str]) -> None:
        self.conn, self.database, self.spent, self.calls = conn, conn.database, spent, calls

    def execute(self, query: str, params: dict[str, Any] | None = None) -> Any:
        t0 = time.perf_counter()
        result = self.conn.execute(query, params or {})
        key = re.sub(r"\s+", " ", query)[:100]
        self.spent[key] += time.perf_counter() - t0
        self.calls[key] += 1
        return result


def shard_logs(n_ent: int, n_rel: int) -> dict[int, list[bytes]]:
    logs: dict[int, list[bytes]] = defaultdict(list)
    for i, work in enumerate(batches(*make_data(n_ent, n_rel), 2000, 10000)):
        req = msgspec.convert(msgspec.to_builtins(work), UpsertRequest)
        for shard, entry in split_upsert(req, SHARDS, _GivenVectors(), f"req-{i}", 0.0).items():
            logs[shard].append(encode_entry(entry))
    return logs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=50_000)
    p.add_argument("--relations", type=int, default=250_000)
    p.add_argument("--batch", type=int, default=64, help="entries per apply_batch call")
    a = p.parse_args()
    logs = shard_logs(a.entities, a.relations)
    spent: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    wall = cpu = 0.0
    with tempfile.TemporaryDirectory(prefix="torua-replay-") as tmp:
        for shard in range(SHARDS):
            db = kuzu.Database(f"{tmp}/{shard}", buffer_pool_size=256 << 20, max_db_size=1 << 36,
                               max_num_threads=2)
            conn = kuzu.Connection(db)
            init_schema(conn, DIM)
            timed = TimedConnection(conn, spent, calls)
            log = [(seq, raw) for seq, raw in enumerate(logs[shard], 1)]
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, len(log), a.batch):
                r = apply_batch(timed, log[i:i + a.batch], DIM)
                assert not r.failures and r.error is None, (r.failures, r.error)
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            conn.close()
            db.close()
    rows = a.entities + a.relations
    print(f"{sum(map(len, logs.values()))} entries on {SHARDS} shards, {a.batch} per batch: {wall:.2f} s"
          f" ({cpu:.2f} CPU-s) = {rows / wall:,.0f} rows/s on one thread")
    print(f"in Kuzu statements: {sum(spent.values()):.2f} s")
    for query, s in spent.most_common(8):
        print(f"  {s:6.2f} s {calls[query]:5d}x  {query}")


if __name__ == "__main__":
    main()
