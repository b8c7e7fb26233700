"""Query speed through the cluster, side by side with one-process references on the same data.

    python -m bench.query [--entities 50000] [--relations 250000] [--nodes 3] [--shards 8]
                          [--replicas 1] [--requests 200] [--clients 16] [--direction out]
    make bench-query BENCH_ARGS="--entities 10000 --relations 50000"

Generates a graph (fixed seed): `--entities` entities with random unit vectors of `--dim`
dimensions (the cluster is created with that TORUA_EMBEDDING_DIM; vectors are given, so no text is
embedded for them), syllable names and five types, and `--relations` relations between random
pairs (six types). `--chunks` generated passages (10 per document) each state three of the
relations in words; those relations carry the passage's id (`chunks`), and the passage lists the
six entities it mentions, as an extractor would. The passages have no vectors: the cluster embeds
their text with its default embedder while loading.

Loads it through `torua.graph.upsert` (batches, 4 in flight; the load rate is printed, both when
acknowledged and when applied by every replica), then times `--requests` sequential requests of
each kind from one client, each on a distinct id or vector, strong reads (the default):

- `graph.get` by id, twice: through the Python client, which asks the owning shard directly
  (docs/api.md, "Direct point reads"), and as a plain request to `torua.graph.get` (what `nats req`
  sends), which a router answers (from its own replica of the shard where it hosts one);
  `graph.neighbors` 1, 2 and 3 hops (`--direction`, default `out`; no limit
  reached, so the answer is the whole k-hop neighbourhood); `search.vector` top 10 over the
  entities (the Python client asks every shard itself: docs/api.md, "Direct vector search"); `rag.retrieve` k=5 of a question naming the two ends of a relation a passage states.

Beside it, in this process, on the same data (built before the cluster starts; timed in turn with
the cluster, 20 requests of one side after 20 of the other, so both see the machine alike):

- embedded Kuzu holding everything in one database (Entity node table with a FLOAT[dim] vector,
  one RELATES table; parameterised Cypher): the entity row by id (with its vector, as graph.get
  returns it) and the distinct ids reached in 1..k hops (Cypher `-[:RELATES*1..k]->`);
- NumPy exact top 10 (dot product of unit vectors, one BLAS thread) over all entity vectors;
- NetworkX (`single_source_shortest_path_length` with a cutoff) for the k-hop neighbourhoods;

and a bare nats-py request-reply between this process and another one through the cluster's
nats-server, the floor of any read, taken in turn with each kind of request too. Then `--clients`
concurrent clients (one connection each, all in this process) send `--requests` requests each of
`graph.get` and of 1-hop neighbours: requests per second.

Prints one table of p50 (p95) with the ratios Torua / reference and Torua / bare round trip, and
the checks: neighbourhoods equal NetworkX's (cluster and Kuzu), search.vector recall@10 against
exact NumPy, how often rag.retrieve's top 5 holds the passage stating the asked relation.
"""

# ruff: noqa: E402 - OpenBLAS reads its thread count once, when NumPy is first imported (below)
from __future__ import annotations

import os

# The exact-search reference runs NumPy's matrix-vector product on one thread, as a node's search of
# one shard does on its shard thread: OpenBLAS's default, a thread per core, swings from 1 to 15 ms
# per query on this 2-core machine once the cluster and other work want the cores too (measured).
# Only this process: the variable is restored before the cluster's processes inherit the environment.
# (Without effect when NumPy was imported already, e.g. under pytest; the smoke test times nothing.)
_BLAS_THREADS = os.environ.get("OPENBLAS_NUM_THREADS")
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import asyncio
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import kuzu
import msgspec
import networkx as nx
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from bench._cluster import (
    AppliedWatch,
    EchoPeer,
    cluster_ingest,
    local_cluster,
    p50_p95_ms,
    ready_state,
)
from torua import Client, eventloop, subjects
from torua.model import Chunk, Document, Entity, GetReply, NeighborsReply, Relation

if _BLAS_THREADS is None:
    del os.environ["OPENBLAS_NUM_THREADS"]
else:
    os.environ["OPENBLAS_NUM_THREADS"] = _BLAS_THREADS

Vectors = npt.NDArray[np.float32]
Indices = npt.NDArray[np.int64]

SEED = 7
TOP_K = 10
RETRIEVE_K = 5
WARM_UP = 5  # requests of each kind before timing, on ids outside the timed ones
BLOCK = 20  # timed requests of one kind in a row, before as many of the references (_SideBySide)
NO_LIMIT = 100_000  # graph.neighbors' largest `limit`: the whole neighbourhood, as NetworkX gives
_SYLLABLES = ["ka", "lo", "ri", "ve", "zan", "tor", "mi", "sel", "dru", "qua",
              "bex", "nor", "fen", "ilo", "pra", "vos", "tem", "yul", "gri", "osh"]
_TYPES = ["person", "company", "city", "product", "university"]
# relation type -> the sentence a passage states it with
_FACTS = {
    "KNOWS": "{s} has known {t} for years.",
    "WORKS_WITH": "{s} works closely with {t}.",
    "SUPPLIES": "{s} supplies parts to {t}.",
    "LOCATED_NEAR": "{s} sits a short walk from {t}.",
    "INVESTS_IN": "{s} invested heavily in {t}.",
    "MENTORS": "{s} mentored {t} early on.",
}
_REL_TYPES = list(_FACTS)


# --- data ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Data:
    ids: list[str]
    names: list[str]
    types: list[str]
    vecs: Vectors  # unit rows
    src: Indices
    dst: Indices
    rel_type: Indices  # index into _REL_TYPES
    chunks: list[Chunk]
    documents: list[Document]
    relation_chunk: dict[int, str] = field(default_factory=dict)  # relation index -> chunk stating it


def _name(i: int) -> str:
    """A distinct two-word name per index below 20**5 (7919 is prime to 20, so the map is a bijection)."""
    j = (i * 7919 + 13) % len(_SYLLABLES) ** 5
    d = [(j // len(_SYLLABLES) ** p) % len(_SYLLABLES) for p in range(5)]
    first = "".join(_SYLLABLES[x] for x in d[:3])
    return f"{first.capitalize()} {(_SYLLABLES[d[3]] + _SYLLABLES[d[4]]).capitalize()}"


def make_data(n_ent: int, n_rel: int, n_chunks: int, dim: int, seed: int = SEED) -> Data:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n_ent, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    src = rng.integers(0, n_ent, n_rel)
    dst = (src + rng.integers(1, n_ent, n_rel)) % n_ent  # never a self-loop
    rel_type = rng.integers(0, len(_REL_TYPES), n_rel)
    ids = [f"e{i:07d}" for i in range(n_ent)]
    names = [_name(i) for i in range(n_ent)]
    data = Data(ids, names, [_TYPES[i % len(_TYPES)] for i in range(n_ent)], vecs, src, dst, rel_type, [], [])
    # Passage c states relations 3c, 3c+1 and 3c+2 (relations are random, so these are too).
    for c in range(min(n_chunks, n_rel // 3)):
        cid, doc = f"c{c:07d}", f"d{c // 10:06d}"
        if c % 10 == 0:
            data.documents.append(Document(id=doc, title=f"Generated document {c // 10}"))
        sentences, mentioned = [], []
        for r in range(3 * c, 3 * c + 3):
            s, t = int(src[r]), int(dst[r])
            sentences.append(_FACTS[_REL_TYPES[rel_type[r]]].format(s=names[s], t=names[t]))
            mentioned += [ids[s], ids[t]]
            data.relation_chunk[r] = cid
        data.chunks.append(Chunk(id=cid, document_id=doc, text=" ".join(sentences),
                                 entities=list(dict.fromkeys(mentioned)), position=c % 10))
    return data


def graph_batches(d: Data, ent_batch: int, rel_batch: int) -> list[dict[str, Any]]:
    work: list[dict[str, Any]] = []
    for i in range(0, len(d.ids), ent_batch):
        work.append({"entities": [
            Entity(id=d.ids[j], name=d.names[j], type=d.types[j], embedding=d.vecs[j].tolist())
            for j in range(i, min(i + ent_batch, len(d.ids)))]})
    for i in range(0, len(d.src), rel_batch):
        work.append({"relations": [
            Relation(source=d.ids[d.src[r]], target=d.ids[d.dst[r]], type=_REL_TYPES[d.rel_type[r]],
                     chunks=[d.relation_chunk[r]] if r in d.relation_chunk else [])
            for r in range(i, min(i + rel_batch, len(d.src)))]})
    return work


def chunk_batches(d: Data, per: int = 200) -> list[dict[str, Any]]:
    """Passages in batches of `per`, each with the documents of its passages (passage c is in document c // 10)."""
    return [{"documents": d.documents[i // 10 : (min(i + per, len(d.chunks)) - 1) // 10 + 1], "chunks": d.chunks[i : i + per]}
            for i in range(0, len(d.chunks), per)]


# --- what is asked --------------------------------------------------------------------------------


@dataclass(slots=True)
class Asks:
    """What request i of each kind asks (i < n timed, then WARM_UP more), the same on every side."""

    get: list[int]
    hops: dict[int, list[int]]
    vectors: Vectors
    questions: list[tuple[str, str]]  # (question, id of the chunk stating the asked relation)


def make_asks(d: Data, n: int, seed: int = SEED + 1) -> Asks:
    rng = np.random.default_rng(seed)
    m = n + WARM_UP
    pick = rng.choice(len(d.ids), size=4 * m, replace=len(d.ids) < 4 * m).tolist()  # distinct ids where there are enough
    vectors = rng.standard_normal((m, d.vecs.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    stated = sorted(d.relation_chunk)
    questions = []
    for i in range(m):
        r = stated[(i * 7) % len(stated)] if stated else 0
        questions.append((f"How is {d.names[d.src[r]]} connected to {d.names[d.dst[r]]}?", d.relation_chunk.get(r, "")))
    return Asks(pick[:m], {1: pick[m : 2 * m], 2: pick[2 * m : 3 * m], 3: pick[3 * m : 4 * m]}, vectors, questions)


# --- references in this process --------------------------------------------------------------------


class References:
    """The one-process references on the same data, kept open while the cluster runs so that each
    is timed in turn with the cluster's answers to the same requests (`_SideBySide`): embedded Kuzu
    holding everything in one database, exact NumPy top 10 over all entity vectors, NetworkX
    k-hop neighbourhoods. Built, and their answers checked, before the cluster starts."""

    def __init__(self, d: Data, asks: Asks, n: int, direction: str, tmp: Path) -> None:
        self.d, self.asks = d, asks
        self.build_s: dict[str, float] = {}
        dim = d.vecs.shape[1]
        # NetworkX: directed, or an undirected copy when both directions are followed.
        t = time.perf_counter()
        g: nx.Graph = nx.DiGraph()
        g.add_nodes_from(d.ids)
        g.add_edges_from((d.ids[a], d.ids[b]) for a, b in zip(d.src.tolist(), d.dst.tolist()))
        if direction == "both":
            g = g.to_undirected()
        self._g = g
        self.build_s["NetworkX graph"] = time.perf_counter() - t
        self._db = kuzu.Database(str(tmp / "g"), buffer_pool_size=1 << 30, max_db_size=1 << 36)
        self._conn = kuzu.Connection(self._db)
        t = time.perf_counter()
        self._conn.execute(f"CREATE NODE TABLE Entity(id STRING PRIMARY KEY, name STRING, type STRING, embedding FLOAT[{dim}])")
        self._conn.execute("CREATE REL TABLE RELATES(FROM Entity TO Entity, type STRING, weight DOUBLE)")
        self._conn.execute("COPY Entity FROM $t", {"t": pa.table({
            "id": d.ids, "name": d.names, "type": d.types,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(d.vecs.ravel()), dim)})})
        self._conn.execute("COPY RELATES FROM $t", {"t": pa.table({
            "from": [d.ids[i] for i in d.src.tolist()], "to": [d.ids[i] for i in d.dst.tolist()],
            "type": [_REL_TYPES[i] for i in d.rel_type.tolist()], "weight": np.ones(len(d.src))})})
        self.build_s["Kuzu COPY"] = time.perf_counter() - t
        self._get_stmt = "MATCH (e:Entity {id: $id}) RETURN e.id, e.name, e.type, e.embedding"
        arrow = "->" if direction == "out" else "-"
        self._hop_stmts = {k: f"MATCH (a:Entity {{id: $id}})-[:RELATES*1..{k}]{arrow}(b:Entity) RETURN DISTINCT b.id"
                           for k in asks.hops}
        # The answers every side must give, per timed request (untimed).
        self.truth_hops = {k: [self.nx_hood(k, i) for i in range(n)] for k in asks.hops}  # NetworkX's
        self.truth_top = [self.exact_top(i) for i in range(n)]
        # Timed requests where Kuzu's neighbourhood equals NetworkX's; its walks may come back to the
        # start, which NetworkX's answer includes at distance 0.
        self.kuzu_equal = {k: sum({r[0] for r in self.kuzu_hood(k, i)} | {d.ids[starts[i]]} == self.truth_hops[k][i]
                                  for i in range(n)) for k, starts in asks.hops.items()}

    def close(self) -> None:
        self._conn.close()
        self._db.close()

    def _rows(self, stmt: str, id_: str) -> list[list[Any]]:
        result = self._conn.execute(stmt, {"id": id_})
        assert isinstance(result, kuzu.QueryResult)
        return cast(list[list[Any]], result.get_all())

    def kuzu_get(self, i: int) -> list[list[Any]]:
        """Request i of `graph.get`: the entity row by id, with its vector (as graph.get returns it)."""
        return self._rows(self._get_stmt, self.d.ids[self.asks.get[i]])

    def kuzu_hood(self, k: int, i: int) -> list[list[Any]]:
        """Request i of `k` hops: the distinct ids reached in 1..k hops (Cypher `-[:RELATES*1..k]->`)."""
        return self._rows(self._hop_stmts[k], self.d.ids[self.asks.hops[k][i]])

    def nx_hood(self, k: int, i: int) -> set[str]:
        return set(nx.single_source_shortest_path_length(self._g, self.d.ids[self.asks.hops[k][i]], cutoff=k))

    def exact_top(self, i: int) -> list[str]:
        scores = self.d.vecs @ self.asks.vectors[i]
        top = np.argpartition(-scores, TOP_K - 1)[:TOP_K] if len(scores) > TOP_K else np.arange(len(scores))
        return [self.d.ids[j] for j in top[np.argsort(-scores[top], kind="stable")]]


# --- the cluster -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ClusterFigures:
    load: dict[str, float] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    reference: dict[str, list[float]] = field(default_factory=dict)  # "Kuzu graph.get", "NetworkX neighbors 2", ...
    floor: dict[str, list[float]] = field(default_factory=dict)  # a bare round trip beside each timed request
    throughput: dict[str, float] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)


class _SideBySide:
    """Timed requests in blocks of `BLOCK`, each block followed by the same requests to the
    references in this process and by as many bare round trips (`EchoPeer`), each timed in a row
    as before (warm: their best case), so that the cluster's figures and the ones they are compared
    with are taken turn by turn through the run and see the machine alike: on this shared host the
    same figure moved 1.5–2x within minutes. (One request each in turn would compare a warm cluster
    with cold references: the round trip measured 0.60 against 0.38 ms so, NumPy 1.12 against 0.62.)"""

    def __init__(self, out: ClusterFigures, echo: EchoPeer) -> None:
        self.out, self.echo = out, echo

    async def run(self, n: int, key: str, call: Callable[[int], Awaitable[Any]],
                  refs: dict[str, Callable[[int], object]] | None = None) -> list[Any]:
        """`n` sequential requests `call(i)` (after WARM_UP others), timed as `key`; `refs` timed
        in turn with them as `<name> <key>`; returns the cluster's replies."""
        refs = refs or {}
        for i in range(n, n + WARM_UP):
            await call(i)
            for ref in refs.values():
                ref(i)
        out = self.out
        samples = out.latency.setdefault(key, [])
        ref_samples = {name: out.reference.setdefault(f"{name} {key}", []) for name in refs}
        floor = out.floor.setdefault(key, [])
        replies: list[Any] = []
        for block in range(0, n, BLOCK):
            ids = range(block, min(block + BLOCK, n))
            for i in ids:
                t = time.perf_counter()
                replies.append(await call(i))
                samples.append(time.perf_counter() - t)
            for name, ref in refs.items():
                for i in ids:
                    t = time.perf_counter()
                    ref(i)
                    ref_samples[name].append(time.perf_counter() - t)
            for _ in ids:
                floor.append(await self.echo.rtt())
        return replies


async def _throughput(url: str, clients: int, per_client: int, call: Callable[[Client, int], Awaitable[Any]]) -> float:
    """Requests per second of `clients` connections each sending `per_client` requests one after another."""
    conns = [await Client.connect(url, request_timeout=60) for _ in range(clients)]
    try:
        async def run(c: int) -> None:
            for i in range(per_client):
                await call(conns[c], c * per_client + i)

        t = time.perf_counter()
        await asyncio.gather(*(run(c) for c in range(clients)))
        return clients * per_client / (time.perf_counter() - t)
    finally:
        for c in conns:
            await c.close()


async def cluster_figures(d: Data, asks: Asks, ref: References, args: argparse.Namespace) -> ClusterFigures:
    out = ClusterFigures()
    n = args.requests
    with local_cluster(args, d.vecs.shape[1], "torua-bench-query-") as cluster:
        async with await Client.connect(cluster.url, request_timeout=120) as client:
            info = await client.wait_for_state(ready_state(args), 90)
            assert info.embedding_dim == d.vecs.shape[1], info.embedding_dim
            watch = AppliedWatch()
            await watch.start(client)
            t0 = time.perf_counter()
            acked_s, tokens = await cluster_ingest(client, graph_batches(d, args.entity_batch, args.relation_batch), 4)
            await watch.wait(client, tokens)
            out.load["graph acked s"], out.load["graph applied s"] = acked_s, time.perf_counter() - t0
            t0 = time.perf_counter()
            _, chunk_tokens = await cluster_ingest(client, chunk_batches(d), 4)
            await watch.wait(client, chunk_tokens)
            out.load["chunks applied s"] = time.perf_counter() - t0
            # The floor: a payload the size of a graph.get request to a subscriber in another process.
            payload = msgspec.json.encode({"id": d.ids[0], "after": {}, "consistency": "strong"})
            async with EchoPeer(cluster.url, payload=payload, other_process=True) as echo:
                for _ in range(WARM_UP):  # the first replies warm the connection
                    await echo.rtt()
                await _cluster_latencies(client, d, asks, ref, n, args.direction, _SideBySide(out, echo))
            ids = d.ids
            out.throughput["graph.get"] = await _throughput(
                cluster.url, args.clients, n, lambda c, i: c.get(ids[i % len(ids)]))
            out.throughput["neighbors 1"] = await _throughput(
                cluster.url, args.clients, n, lambda c, i: c.neighbors([ids[(7 * i) % len(ids)]], hops=1, direction=args.direction))
    return out


async def _cluster_latencies(
    client: Client, d: Data, asks: Asks, ref: References, n: int, direction: str, side: _SideBySide
) -> None:
    out = side.out
    replies = await side.run(n, "graph.get", lambda i: client.get(d.ids[asks.get[i]]), {"Kuzu": ref.kuzu_get})
    ok = sum(r.entity.id == d.ids[asks.get[i]] and r.entity.name == d.names[asks.get[i]] for i, r in enumerate(replies))
    out.checks["graph.get returns the entity"] = f"{ok}/{n}"

    async def via_router(i: int) -> GetReply:
        # What `nats req torua.graph.get '{"id": ...}'` sends: the routers' queue group answers.
        payload = msgspec.json.encode({"id": d.ids[asks.get[i]], "after": {}, "consistency": "strong"})
        msg = await client.nc.request(subjects.GRAPH_GET, payload, timeout=30)
        return msgspec.json.decode(msg.data, type=GetReply)

    routed = await side.run(n, "graph.get router", via_router, {"Kuzu": ref.kuzu_get})
    same = sum(a == b for a, b in zip(replies, routed))
    out.checks["graph.get through a router (nats request) answers the same as the client's direct read"] = f"{same}/{n}"
    for k in asks.hops:

        async def hood(i: int, k: int = k) -> NeighborsReply:
            return await client.neighbors([d.ids[asks.hops[k][i]]], hops=k, direction=direction, limit=NO_LIMIT)

        hoods = await side.run(n, f"neighbors {k}", hood, {"Kuzu": partial(ref.kuzu_hood, k), "NetworkX": partial(ref.nx_hood, k)})
        equal = sum({x.id for x in r.nodes} == ref.truth_hops[k][i] and not r.partial for i, r in enumerate(hoods))
        sizes = [len(t) for t in ref.truth_hops[k]]
        out.checks[f"neighbors {k} hop{'s' if k > 1 else ''}: the cluster's (Kuzu's) answers equal NetworkX's"] = (
            f"{equal}/{n} ({ref.kuzu_equal[k]}/{n}); neighbourhood p50 {int(np.median(sizes))} entities")
    hits = await side.run(
        n, "search.vector", lambda i: client.search_vector(vector=asks.vectors[i].tolist(), k=TOP_K, target="entities"),
        {"NumPy": ref.exact_top})
    recall = np.mean([len({h.id for h in r.hits} & set(ref.truth_top[i])) / TOP_K for i, r in enumerate(hits)])
    out.checks["search.vector recall@10 vs exact NumPy"] = f"{recall:.3f}"
    retrieved = await side.run(n, "rag.retrieve", lambda i: client.retrieve(asks.questions[i][0], k=RETRIEVE_K))
    found = sum(asks.questions[i][1] in {c.id for c in r.chunks} for i, r in enumerate(retrieved))
    out.checks["rag.retrieve top 5 holds the passage stating the asked relation"] = f"{found}/{n}"


# --- report ----------------------------------------------------------------------------------------


def _t(ms: float) -> str:
    if ms < 0.1:
        return f"{ms * 1000:.0f} µs"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def _ratio(a: float, b: float) -> str:
    return f"x{a / b:.1f}" if a / b < 100 else f"x{a / b:,.0f}"


def report(d: Data, ref: References, c: ClusterFigures, args: argparse.Namespace, started: float, load0: float) -> None:
    rows_loaded = len(d.ids) + len(d.src)
    # Other work on the machine moves every figure: the load average says how much there was.
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-minute load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{len(d.ids):,} entities ({d.vecs.shape[1]}-d vectors), {len(d.src):,} relations, {len(d.chunks):,} passages; "
          f"{args.nodes} node(s) x {args.shards} shards, R={args.replicas}; {os.cpu_count()} CPUs; "
          f"p50 (p95) of {args.requests} sequential requests, strong reads; neighbours direction '{args.direction}'")
    print(f"load through torua.graph.upsert: {rows_loaded:,} entities + relations acknowledged in "
          f"{c.load['graph acked s']:.1f} s ({rows_loaded / c.load['graph acked s']:,.0f} rows/s), applied by every replica in "
          f"{c.load['graph applied s']:.1f} s ({rows_loaded / c.load['graph applied s']:,.0f} rows/s); "
          f"{len(d.chunks):,} passages (embedded by the cluster) applied in {c.load['chunks applied s']:.1f} s")
    print("references built in this process: " + ", ".join(f"{k} {v:.1f} s" for k, v in ref.build_s.items()))
    print()
    print("| operation | Torua p50 (p95) | reference p50 | Torua / reference | NetworkX / NumPy p50 | Torua / in memory | Torua / bare round trip |")
    print("|---|---|---|---|---|---|---|")
    table: list[tuple[str, str, str, str]] = [
        ("`graph.get` by id", "graph.get", "Kuzu", ""),
        ("`graph.get` by id via a router (`nats req`)", "graph.get router", "Kuzu", ""),
        *((f"`neighbors` {k} hop{'s' if k > 1 else ''}", f"neighbors {k}", "Kuzu", "NetworkX") for k in (1, 2, 3)),
        ("`search.vector` top-10", "search.vector", "NumPy", ""),
        ("`rag.retrieve` k=5", "rag.retrieve", "", ""),
    ]
    names = {"NumPy": "NumPy exact, 1 thread"}
    for label, key, ref_name, memory in table:
        t50, t95 = p50_p95_ms(c.latency[key])
        cells = [label, f"{_t(t50)} ({_t(t95)})"]
        for name in (ref_name, memory):
            if name:
                r50 = p50_p95_ms(c.reference[f"{name} {key}"])[0]
                cells += [f"{names.get(name, name)} {_t(r50)}", _ratio(t50, r50)]
            else:
                cells += ["", ""]
        cells.append(_ratio(t50, p50_p95_ms(c.floor[key])[0]))
        print("| " + " | ".join(cells) + " |")
    floor50, floor95 = p50_p95_ms([x for samples in c.floor.values() for x in samples])
    print(f"| bare nats-py request-reply, two processes | {_t(floor50)} ({_t(floor95)}) | | | | | x1.0 |")
    print("\n(every row but the router's is the Python client's; its `graph.get` asks the owning shard directly, "
          "its `search.vector` every shard; the references and the bare round trip are timed in turn with "
          f"each row's requests, {BLOCK} of one after {BLOCK} of the other, and each row's ratios are to the figures "
          "taken beside it)")
    print()
    for op, rate in c.throughput.items():
        seq = len(c.latency[op]) / sum(c.latency[op])
        label = "graph.get" if op == "graph.get" else "neighbors 1 hop"
        print(f"throughput, {args.clients} concurrent clients, {label}: {rate:,.0f} requests/s "
              f"(one client, sequential: {seq:,.0f}/s, x{rate / seq:.1f})")
    for name, value in c.checks.items():
        print(f"check: {name}: {value}")
    print(f"\nrun took {time.perf_counter() - started:.0f} s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=50_000)
    p.add_argument("--relations", type=int, default=250_000)
    p.add_argument("--chunks", type=int, default=2_000, help="generated passages, each stating 3 relations")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (the cluster's TORUA_EMBEDDING_DIM)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--requests", type=int, default=200, help="timed sequential requests of each kind")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients of the throughput run")
    p.add_argument("--direction", choices=["out", "both"], default="out", help="of the k-hop neighbourhoods")
    p.add_argument("--entity-batch", type=int, default=2000)
    p.add_argument("--relation-batch", type=int, default=10000)
    args = p.parse_args(argv)
    if args.entities < 2 * TOP_K or args.relations < 3:
        p.error("needs at least 20 entities and 3 relations")
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    data = make_data(args.entities, args.relations, args.chunks, args.dim)
    asks = make_asks(data, args.requests)
    with tempfile.TemporaryDirectory(prefix="torua-bench-query-kuzu-") as tmp:
        ref = References(data, asks, args.requests, args.direction, Path(tmp))
        try:
            figures = eventloop.run(cluster_figures(data, asks, ref, args))
        finally:
            ref.close()
    report(data, ref, figures, args, started, load0)


if __name__ == "__main__":
    main()
