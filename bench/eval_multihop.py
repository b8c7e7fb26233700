"""Retrieval quality on the harder multi-hop benchmark (bench/multihop.py), on real local clusters.

    python -m bench.eval_multihop [--shards 1,8] [--nodes 2] [--seed 7] [--size default] [--hops 2]
                                  [--limit N] [--json results.json]

For each shard count: starts a local cluster (nats-server, coordinator, `--nodes` nodes, R=1) in a
temporary directory on a free port, upserts the generated corpus (pre-extracted graph, the
cluster's default embedder for the vectors), waits until every replica has applied it, then asks
every question of `rag.retrieve` (k=10, once per `--hops` value) and, as baselines, `search.text`
(BM25) and `search.hybrid` (BM25 + vector, reciprocal rank fusion), k=10.

Prints, per shard count, R@5 (the fraction of a question's supporting chunks in the top 5,
averaged) and All@10 (the fraction of questions with every supporting chunk in the top 10) per
method and question kind, retrieve's latency, and whether each method ranked the same chunk ids
on every shard count. Everything is deterministic: the same arguments print the same quality
figures (latencies vary).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.multihop import KINDS, Benchmark, Question, generate, summary
from torua import Client
from torua.model import Tokens
from torua.up import LocalCluster, UpOptions

BATCH = 250
K = 10


@dataclass(slots=True)
class Run:
    shards: int
    nodes: int
    load_s: float = 0.0
    ranked: dict[str, list[list[str]]] = field(default_factory=dict)  # method -> per question, chunk ids
    latency: dict[str, list[float]] = field(default_factory=dict)  # method -> seconds per question
    partial: int = 0


async def load(client: Client, bench: Benchmark) -> Tokens:
    tokens: Tokens = {}
    n = max(len(bench.documents), len(bench.chunks), len(bench.entities), len(bench.relations))
    for i in range(0, n, BATCH):
        reply = await client.upsert(
            documents=bench.documents[i : i + BATCH],
            chunks=bench.chunks[i : i + BATCH],
            entities=bench.entities[i : i + BATCH],
            relations=bench.relations[i : i + BATCH],
        )
        for shard, seq in reply.tokens.items():
            tokens[shard] = max(tokens.get(shard, 0), seq)
    return tokens


async def wait_applied(client: Client, tokens: Tokens, timeout: float = 600.0) -> None:
    """Until every replica of every shard has applied the writes (the reads also carry `after`)."""
    deadline = time.monotonic() + timeout
    while True:
        behind = 0
        for node in (await client.cluster_nodes()).nodes:
            for r in (await client.node_info(node.id)).replicas:
                behind += r["applied_seq"] < tokens.get(str(r["shard"]), 0)
        if not behind:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{behind} replicas still behind after {timeout:.0f}s")
        await asyncio.sleep(0.5)


async def ask(client: Client, bench: Benchmark, questions: list[Question], hops: list[int], tokens: Tokens,
              run: Run) -> None:
    for h in hops:
        name = f"retrieve h={h}"
        run.ranked[name], run.latency[name] = [], []
        for q in questions:
            t0 = time.perf_counter()
            r = await client.retrieve(q.text, k=K, hops=h, after=tokens)
            run.latency[name].append(time.perf_counter() - t0)
            run.partial += r.partial
            run.ranked[name].append([c.id for c in r.chunks])
    for name, call in (("hybrid", client.search_hybrid), ("BM25", client.search_text)):
        run.ranked[name], run.latency[name] = [], []
        for q in questions:
            t0 = time.perf_counter()
            s = await call(q.text, k=K, after=tokens)
            run.latency[name].append(time.perf_counter() - t0)
            run.partial += s.partial
            run.ranked[name].append([hit.id for hit in s.hits])


async def evaluate(cluster: LocalCluster, bench: Benchmark, questions: list[Question], hops: list[int],
                   run: Run) -> None:
    async with await Client.connect(cluster.url, request_timeout=60) as client:
        await client.wait_for_state("green", 90)
        t0 = time.perf_counter()
        tokens = await load(client, bench)
        await wait_applied(client, tokens)
        run.load_s = time.perf_counter() - t0
        await ask(client, bench, questions, hops, tokens, run)


def run_cluster(shards: int, nodes: int, bench: Benchmark, questions: list[Question], hops: list[int]) -> Run:
    run = Run(shards=shards, nodes=nodes)
    with tempfile.TemporaryDirectory(prefix=f"torua-multihop-{shards}-") as tmp:
        opts = UpOptions(nodes=nodes, shards=shards, replicas=1, port=-1, data_dir=Path(tmp),
                         heartbeat_interval=0.5, node_timeout=5.0, reassign_delay=10.0)
        cluster = LocalCluster(opts)
        try:
            cluster.start()
            asyncio.run(evaluate(cluster, bench, questions, hops, run))
        finally:
            cluster.stop()
    return run


def code_version() -> str:
    """Which retrieval code the nodes will run: where `torua_node` is imported from (the node
    processes inherit this environment) and a hash of its search, retrieval and router sources."""
    spec = importlib.util.find_spec("torua_node")
    assert spec is not None and spec.origin is not None
    root = Path(spec.origin).parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("rag/*.py"), *root.glob("router/*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"torua_node from {root}, rag+router sources sha256 {digest.hexdigest()[:12]}"


# --- metrics -------------------------------------------------------------------------------------
def recall(ids: list[str], q: Question, k: int) -> float:
    return len(set(ids[:k]) & set(q.supporting)) / len(set(q.supporting))


def scores(questions: list[Question], ranked: list[list[str]]) -> dict[str, tuple[float, float, int]]:
    """Per kind (and "all"): (R@5, All@10, number of questions)."""
    by: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for q, ids in zip(questions, ranked):
        pair = (recall(ids, q, 5), float(recall(ids, q, 10) == 1.0))
        by[q.kind].append(pair)
        by["all"].append(pair)
    return {k: (statistics.fmean(p[0] for p in v), statistics.fmean(p[1] for p in v), len(v)) for k, v in by.items()}


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))] * 1000


def table(run: Run, questions: list[Question]) -> str:
    methods = list(run.ranked)
    per = {m: scores(questions, run.ranked[m]) for m in methods}
    rows = ["| kind (questions) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for kind in (*KINDS, "all"):
        if kind not in per[methods[0]]:
            continue
        n = per[methods[0]][kind][2]
        label = f"**all** ({n})" if kind == "all" else f"{kind} ({n})"
        cells = [f"{per[m][kind][0]:.3f} / {per[m][kind][1]:.3f}" for m in methods]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def latency_line(run: Run) -> str:
    return ", ".join(f"{m} p50 {pct(v, 0.5):.0f} ms / p95 {pct(v, 0.95):.0f} ms" for m, v in run.latency.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="1,8", help="shard counts, comma-separated (default 1,8)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--size", default="default", choices=["tiny", "small", "default", "large"])
    p.add_argument("--hops", default="2", help="retrieve hops, comma-separated (default 2)")
    p.add_argument("--limit", type=int, default=0, help="ask only the first N questions (0: all)")
    p.add_argument("--json", type=Path, help="also write the figures and every ranking here")
    args = p.parse_args(argv)
    shard_counts = [int(x) for x in args.shards.split(",")]
    hops = [int(x) for x in args.hops.split(",")]

    started = time.perf_counter()
    bench = generate(args.seed, args.size)
    questions = bench.questions[: args.limit] if args.limit else bench.questions
    print(summary(bench))
    code = code_version()
    print(f"retrieval code: {code}")
    print(f"asking {len(questions)} questions; retrieve k={K} hops {hops}; hybrid and BM25 k={K}\n", flush=True)

    runs: list[Run] = []
    for shards in shard_counts:
        run = run_cluster(shards, args.nodes, bench, questions, hops)
        runs.append(run)
        print(f"### {shards} shard(s), {args.nodes} node(s), R=1 — corpus written and applied in {run.load_s:.1f} s"
              f"{f', {run.partial} PARTIAL replies' if run.partial else ''}\n")
        print("R@5 / All@10 per method and question kind:\n")
        print(table(run, questions))
        print(f"\nlatency: {latency_line(run)}\n", flush=True)

    if len(runs) > 1:
        print("### same ranked chunk ids (top 10) on " + " and ".join(f"{r.shards}" for r in runs) + " shards\n")
        for m in runs[0].ranked:
            same = sum(all(r.ranked[m][i] == runs[0].ranked[m][i] for r in runs[1:]) for i in range(len(questions)))
            print(f"- {m}: {same} of {len(questions)} questions identical")
        print()
    if code_version() != code:
        print("WARNING: the retrieval code changed during this run; the shard counts may have run different code")
    print(f"total time {time.perf_counter() - started:.0f} s")

    if args.json:
        out = {
            "seed": args.seed, "size": args.size, "nodes": args.nodes, "hops": hops, "code": code,
            "questions": [{"id": q.id, "kind": q.kind, "shape": q.shape, "text": q.text,
                           "supporting": list(q.supporting)} for q in questions],
            "runs": [{
                "shards": r.shards, "load_s": r.load_s, "partial": r.partial,
                "scores": {m: scores(questions, r.ranked[m]) for m in r.ranked},
                "latency_ms": {m: {"p50": pct(v, 0.5), "p95": pct(v, 0.95)} for m, v in r.latency.items()},
                "ranked": r.ranked,
            } for r in runs],
        }
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
