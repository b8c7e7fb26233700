"""WAL apply throughput against a direct bulk COPY of the same rows (run: python -m bench.apply_bench).

Builds 50k entities (64-d embeddings, realistic ids and text) and 250k relations between random
entities, packs them in WAL entries of ~1000 entities / 5000 relations as the router would for a
one-shard cluster, and applies them with `apply_batch` in batches of entries, as a replica does.
Beside it, the same rows go into a fresh database with plain `COPY ... FROM` Arrow tables.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import json
import tempfile
import time
from pathlib import Path

import kuzu
import numpy as np
import pyarrow as pa

from torua_node.shard.apply import apply_batch
from torua_node.shard.wal import WalEntity, WalEntry, WalRelation, encode_entry
from torua_node.storage.digest import counts
from torua_node.storage.schema import init_schema
from torua_node.storage.vectors import VectorIndex

KINDS = ["person", "organization", "location", "event", "concept", "product"]
REL_TYPES = ["WORKS_AT", "KNOWS", "LOCATED_IN", "PART_OF", "FOUNDED", "MENTIONS", "RELATED_TO",
             "OWNS", "ATTENDED", "CREATED", "MEMBER_OF", "SUCCEEDED"]
WORDS = ("alpha bravo carbon delta echo falcon granite harbor indigo jasper kepler lumen meridian "
         "nova orbit prism quartz raven solstice tundra umbra vertex willow xenon yonder zephyr").split()


def make_data(n_ent: int, n_rel: int, dim: int, seed: int) -> tuple[list[WalEntity], list[WalRelation]]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n_ent, dim)).astype("<f4")
    ents = []
    for i in range(n_ent):
        kind = KINDS[i % len(KINDS)]
        name = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 2)).title()
        ents.append(WalEntity(
            id=f"{kind}/{name.lower().replace(' ', '-')}-{i:06x}",
            name=name, type=kind.upper(),
            description=f"{name} is a {kind} " + " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 14)),
            properties=json.dumps({"source": f"doc-{i % 997}", "confidence": round(float(rng.random()), 3)}),
            embedding=vecs[i].tobytes()))
    keys: set[tuple[int, int, int]] = set()
    while len(keys) < n_rel:  # distinct (source, type, target): the relation identity
        s, t, ty = rng.integers(0, n_ent, n_rel), rng.integers(0, n_ent, n_rel), rng.integers(0, len(REL_TYPES), n_rel)
        keys.update(zip(s.tolist(), ty.tolist(), t.tolist()))
    rels = [WalRelation(source=ents[s].id, target=ents[t].id, type=REL_TYPES[ty], weight=float(1 + (s + t) % 5),
                        properties="{}", chunks=[f"chunk/{(s * 7 + t) % 100_000:06d}"])
            for s, ty, t in sorted(keys)[:n_rel]]
    order = rng.permutation(len(rels))
    return ents, [rels[i] for i in order]


def open_db(path: Path, dim: int) -> tuple[kuzu.Database, kuzu.Connection]:
    db = kuzu.Database(str(path), buffer_pool_size=1024 * 1024 * 1024, max_db_size=1 << 36)
    conn = kuzu.Connection(db)
    init_schema(conn, dim)
    return db, conn


def bench_apply(tmp: Path, ents: list[WalEntity], rels: list[WalRelation], dim: int, per_entry: int,
                rels_per_entry: int, batch: int) -> tuple[float, float, dict[str, int]]:
    n_entries = max(len(ents) // per_entry, 1)
    log = []
    for i in range(n_entries):
        e = WalEntry(request_id=f"req-{i}", ts=1.7e9 + i,
                     entities=ents[i * per_entry:(i + 1) * per_entry],
                     relations=rels[i * rels_per_entry:(i + 1) * rels_per_entry])
        log.append((i + 1, encode_entry(e)))
    db, conn = open_db(tmp / f"apply-{batch}.kz", dim)
    ent_index, chunk_index = VectorIndex(dim), VectorIndex(dim)
    t0 = time.perf_counter()
    index_s = 0.0
    for i in range(0, len(log), batch):
        r = apply_batch(conn, log[i:i + batch], dim)
        assert not r.failures and r.error is None, (r.failures, r.error)
        t1 = time.perf_counter()
        r.update_indexes(ent_index, chunk_index)
        index_s += time.perf_counter() - t1
    conn.execute("CHECKPOINT")
    total = time.perf_counter() - t0
    c = counts(conn)
    c["file_mb"] = (tmp / f"apply-{batch}.kz").stat().st_size // 1_000_000
    if batch == 1:
        c["churn_ms"] = int(mixed_churn(conn, ents, rels, dim, seq=len(log)) * 1000)
    conn.close()
    db.close()
    return total, index_s, c


def mixed_churn(conn: kuzu.Connection, ents: list[WalEntity], rels: list[WalRelation], dim: int, seq: int,
                rounds: int = 20) -> float:
    """Upserts and deletes alternating, one entry per batch: the worst case for the checkpoint that
    apply takes before deleting edges (a kuzu 0.11.3 workaround)."""
    t0 = time.perf_counter()
    for i in range(rounds):
        up = WalEntry(request_id=f"u{i}", ts=0.0, entities=ents[i * 100:(i + 1) * 100],
                      relations=rels[i * 500:(i + 1) * 500])
        rm = WalEntry(request_id=f"d{i}", ts=0.0, delete_entities=[e.id for e in ents[-(i + 1) * 5:][:5]])
        for entry in (up, rm):
            seq += 1
            r = apply_batch(conn, [(seq, encode_entry(entry))], dim)
            assert not r.failures and r.error is None, (r.failures, r.error)
    return (time.perf_counter() - t0) / rounds


def bench_copy(tmp: Path, ents: list[WalEntity], rels: list[WalRelation], dim: int,
               vector_type: str) -> tuple[float, float]:
    db = kuzu.Database(str(tmp / f"copy-{vector_type}.kz"), buffer_pool_size=1024 * 1024 * 1024,
                       max_db_size=1 << 36)
    conn = kuzu.Connection(db)
    if vector_type == "BLOB":
        init_schema(conn, dim)
        emb = pa.array([e.embedding for e in ents], pa.binary())
    else:  # the FLOAT[dim] column DESIGN §6 measured, for reference
        conn.execute("CREATE NODE TABLE Entity(id STRING PRIMARY KEY, name STRING, type STRING, description STRING,"
                     f" properties STRING, embedding FLOAT[{dim}], stub BOOLEAN)")
        conn.execute("CREATE REL TABLE RELATES(FROM Entity TO Entity, type STRING, weight DOUBLE,"
                     " properties STRING, chunks STRING)")
        flat = np.frombuffer(b"".join(e.embedding for e in ents), "<f4")
        emb = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    # Arrow tables are built outside the timed part: COPY alone is the baseline.
    et = pa.table({"id": [e.id for e in ents], "name": [e.name for e in ents], "type": [e.type for e in ents],
                   "description": [e.description for e in ents], "properties": [e.properties for e in ents],
                   "embedding": emb, "stub": pa.repeat(False, len(ents))})
    rt = pa.table({"from": [r.source for r in rels], "to": [r.target for r in rels], "type": [r.type for r in rels],
                   "weight": [r.weight for r in rels], "properties": [r.properties for r in rels],
                   "chunks": [json.dumps(r.chunks, separators=(",", ":")) for r in rels]})
    t0 = time.perf_counter()
    conn.execute("COPY Entity FROM $t", {"t": et})
    t_ent = time.perf_counter() - t0
    conn.execute("COPY RELATES FROM $t", {"t": rt})
    conn.execute("CHECKPOINT")
    total = time.perf_counter() - t0
    conn.close()
    db.close()
    return total, t_ent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, default=50_000)
    p.add_argument("--relations", type=int, default=250_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--per-entry", type=int, default=1000, help="entities per WAL entry")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 10], help="entries per apply_batch call")
    a = p.parse_args()
    rels_per_entry = a.relations * a.per_entry // a.entities
    t = time.perf_counter()
    ents, rels = make_data(a.entities, a.relations, a.dim, seed=42)
    # The 300k generated structs stay alive for the whole run; without this every garbage collection
    # walks them, which a replica (holding no such objects) never pays.
    gc.freeze()
    rows = len(ents) + len(rels)
    print(f"data: {len(ents)} entities x {a.dim}-d, {len(rels)} relations, built in {time.perf_counter() - t:.1f}s;"
          f" entries of {a.per_entry} entities / {rels_per_entry} relations")
    with tempfile.TemporaryDirectory(prefix="torua-apply-bench-") as d:
        tmp = Path(d)
        copy_s, copy_ent_s = bench_copy(tmp, ents, rels, a.dim, "BLOB")
        print(f"direct COPY (same schema, BLOB vectors): {copy_s:.2f}s = {rows / copy_s:,.0f} rows/s"
              f" (entities {len(ents) / copy_ent_s:,.0f}/s, relations {len(rels) / (copy_s - copy_ent_s):,.0f}/s);"
              f" file {(tmp / 'copy-BLOB.kz').stat().st_size // 1_000_000} MB")
        f_s, f_ent_s = bench_copy(tmp, ents, rels, a.dim, "FLOAT")
        print(f"direct COPY (FLOAT[{a.dim}] vectors, reference): {f_s:.2f}s = {rows / f_s:,.0f} rows/s"
              f" (entities {len(ents) / f_ent_s:,.0f}/s)")
        for batch in a.batches:
            s, index_s, c = bench_apply(tmp, ents, rels, a.dim, a.per_entry, rels_per_entry, batch)
            assert c["entities"] == len(ents) and c["relations"] == len(rels), c
            print(f"apply_batch, {batch} entr{'y' if batch == 1 else 'ies'} per batch: {s:.2f}s ="
                  f" {rows / s:,.0f} rows/s; COPY is {s / copy_s:.1f}x faster"
                  f" (vector index updates {index_s * 1000:.0f} ms of it); file {c['file_mb']} MB")
            if "churn_ms" in c:
                print(f"  then 20 x (upsert 100 entities + 500 relations; delete 5 entities), one entry per"
                      f" batch: {c['churn_ms']} ms per pair")


if __name__ == "__main__":
    main()
