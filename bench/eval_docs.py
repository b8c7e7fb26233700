"""Retrieval on real documentation: answered@k of `rag.retrieve`, hybrid search and BM25.

    python -m bench.eval_docs [--shards 8] [--nodes 2] [--replicas 1] [--k 5] [--sets fastapi,prometheus] [--verbose]

Each set is a public documentation tree and questions written by hand in
`bench/eval_docs_questions/<set>.jsonl`, one per line:

    {"id": "...", "question": "...", "answers": ["verbatim substring", ...], "file": "path" | ["path", ...]}

The documentation itself is not in this repository (it is other projects' text):
`bench/eval_docs_questions/<set>.SOURCE.md` names the repository, commit and files of each set.
Put them as `<corpora>/<set>/docs/` and pass `--corpora DIR`, or set TORUA_EVAL_CORPORA; by default
the script looks in `../shared/corpora` (beside the checkout), then `bench/corpora` (ignored by git).

Every answer string is a verbatim substring of one of the question's files (checked before
anything starts). A question is answered@k by a method when one of its answer strings appears,
case-insensitively and with whitespace collapsed, in the text of one of the method's top-k chunks.

For each set, in order, the script starts a fresh local cluster (embedded nats-server on a free
port, a coordinator and `--nodes` nodes, data in a temporary directory), ingests the set's docs/
exactly as `torua ingest <corpora>/<set>/docs` does (default chunker, extractor and cluster
embedder), waits until every replica has applied every write, asks every question with
`torua.rag.retrieve` (k, default hops and budget), `torua.search.hybrid` and `torua.search.text`
(BM25), all with the ingest's write tokens, and stops the cluster. It prints answered@k per set and
overall, retrieve latency p50/p95 and ingest times; `--verbose` adds every miss with the chunks that
took the top k, and the rank (up to `--depth`) of the first chunk that holds an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from torua import Client
from torua.chunking import TokenChunker
from torua.ingest import IngestOptions, IngestStats, discover, document_id, ingest_paths
from torua.model import Tokens
from torua.up import LocalCluster, UpOptions

ROOT = Path(__file__).resolve().parent
CORPORA_CANDIDATES = (ROOT.parent.parent / "shared" / "corpora", ROOT / "corpora")
QUESTIONS = ROOT / "eval_docs_questions"
METHODS = ("retrieve", "hybrid", "bm25")
CHUNK_QUERY = "MATCH (c:Chunk) WHERE c.id IN $ids RETURN c.id, c.text"


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass(slots=True)
class Question:
    id: str
    question: str
    answers: list[str]
    files: list[str]

    def answered_by(self, text: str) -> bool:
        t = norm(text)
        return any(norm(a) in t for a in self.answers)


@dataclass(slots=True)
class DocSet:
    name: str
    docs: Path
    questions: list[Question]
    paths: dict[str, str] = field(default_factory=dict)  # document id -> path relative to docs/
    gold: dict[str, list[str]] = field(default_factory=dict)  # question id -> chunk ids holding an answer


def corpora_dir(given: str | None) -> Path:
    """--corpora, else TORUA_EVAL_CORPORA, else the first default location that exists."""
    chosen = given or os.environ.get("TORUA_EVAL_CORPORA")
    if chosen:
        return Path(chosen)
    return next((c for c in CORPORA_CANDIDATES if c.is_dir()), CORPORA_CANDIDATES[-1])


def available_sets(corpora: Path) -> list[str]:
    return sorted(p.stem for p in QUESTIONS.glob("*.jsonl") if (corpora / p.stem / "docs").is_dir())


def load_set(name: str, corpora: Path) -> DocSet:
    docs = corpora / name / "docs"
    if not docs.is_dir():
        raise SystemExit(f"eval_docs: no corpus {docs}")
    questions = []
    for n, line in enumerate((QUESTIONS / f"{name}.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        raw = json.loads(line)
        files = raw["file"] if isinstance(raw["file"], list) else [raw["file"]]
        q = Question(raw["id"], raw["question"], list(raw["answers"]), files)
        texts = [(docs / f).read_text(encoding="utf-8") for f in files]
        for a in q.answers:
            if len(a) < 3 or not any(a in t for t in texts):
                raise SystemExit(f"eval_docs: {name}.jsonl:{n}: answer {a!r} is not a verbatim substring of {files}")
        questions.append(q)
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"eval_docs: {name}.jsonl: duplicate question ids")
    ds = DocSet(name, docs, questions)
    # The chunks ingest will write (same chunker, same ids): which of them can answer each question.
    chunker = TokenChunker(IngestOptions().max_tokens, IngestOptions().overlap)
    chunks: list[tuple[str, str]] = []
    for path in discover([docs]):
        data = path.read_bytes()
        doc = document_id(data)
        ds.paths.setdefault(doc, str(path.relative_to(docs)))
        text = data.decode("utf-8", errors="replace")
        chunks += [(f"{doc}#{i}", c.text) for i, c in enumerate(chunker.split(text))]
    for q in questions:
        ds.gold[q.id] = sorted({cid for cid, text in chunks if q.answered_by(text)})
        if not ds.gold[q.id]:
            print(f"warning: {name}/{q.id}: no single chunk holds an answer (split at a chunk boundary)", file=sys.stderr)
    return ds


async def all_applied(client: Client, tokens: Tokens) -> bool:
    for node in (await client.cluster_nodes()).nodes:
        for r in (await client.node_info(node.id)).replicas:
            if (r.get("applied_seq") or 0) < tokens.get(str(r["shard"]), 0):
                return False
    return True


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))] * 1000 if s else float("nan")


@dataclass(slots=True)
class SetResult:
    name: str
    n: int = 0
    answered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METHODS, 0))
    latencies: list[float] = field(default_factory=list)
    ingest: IngestStats | None = None
    acked_s: float = 0.0
    applied_s: float = 0.0
    files: int = 0
    misses: list[str] = field(default_factory=list)  # verbose lines


class Evaluator:
    def __init__(self, client: Client, ds: DocSet, tokens: Tokens, k: int, depth: int, verbose: bool) -> None:
        self.client, self.ds, self.tokens, self.k, self.depth, self.verbose = client, ds, tokens, k, depth, verbose
        self.texts: dict[str, str] = {}
        self.partial = 0  # replies that lacked a shard: the numbers would not be the cluster's full answer

    async def texts_of(self, ids: list[str]) -> None:
        missing = sorted(set(ids) - self.texts.keys())
        if missing:
            reply = await self.client.query(CHUNK_QUERY, {"ids": missing}, after=self.tokens)
            if reply.partial:
                raise RuntimeError("a chunk text query was partial")
            self.texts.update({cid: text for cid, text in reply.rows})

    async def ranked(self, method: str, question: str, k: int) -> list[str]:
        if method == "retrieve":
            reply = await self.client.retrieve(question, k=k, after=self.tokens)
            self.partial += reply.partial
            for c in reply.chunks:
                self.texts[c.id] = c.text
            return [c.id for c in reply.chunks]
        search = self.client.search_hybrid if method == "hybrid" else self.client.search_text
        found = await search(question, k=k, after=self.tokens)
        self.partial += found.partial
        ids = [h.id for h in found.hits]
        await self.texts_of(ids)
        return ids

    def where(self, cid: str) -> str:
        doc, _, pos = cid.partition("#")
        return f"{self.ds.paths.get(doc, doc)}#{pos}"

    async def run(self, result: SetResult) -> None:
        await self.client.retrieve("warm-up", k=self.k, after=self.tokens)  # not timed, not counted
        for q in self.ds.questions:
            t0 = time.perf_counter()
            top = {"retrieve": await self.ranked("retrieve", q.question, self.k)}
            result.latencies.append(time.perf_counter() - t0)
            for m in METHODS[1:]:
                top[m] = await self.ranked(m, q.question, self.k)
            hit = {m: any(q.answered_by(self.texts.get(c, "")) for c in top[m]) for m in METHODS}
            result.n += 1
            for m in METHODS:
                result.answered[m] += hit[m]
            if self.verbose and not all(hit.values()):
                await self.explain(q, top, hit, result)
        if self.partial:
            raise RuntimeError(f"{self.partial} partial replies: a shard did not answer; see the node logs")

    async def explain(self, q: Question, top: dict[str, list[str]], hit: dict[str, bool], result: SetResult) -> None:
        gold = set(self.ds.gold[q.id])
        out = [f"  {q.id}  missed by {', '.join(m for m in METHODS if not hit[m])}: {q.question}",
               f"    answers {q.answers} in {', '.join(q.files)}"]
        for m in METHODS:
            deep = await self.ranked(m, q.question, self.depth)
            rank = next((i for i, c in enumerate(deep, 1) if c in gold), None)
            out.append(f"    {m:8} first answering chunk at rank {rank if rank else f'>{self.depth}'}")
        if not hit["retrieve"]:
            for i, cid in enumerate(top["retrieve"], 1):
                snippet = norm(self.texts.get(cid, ""))[:90]
                out.append(f"    retrieve #{i} {self.where(cid)}: {snippet}")
        result.misses.append("\n".join(out))


async def evaluate(ds: DocSet, args: argparse.Namespace) -> SetResult:
    result = SetResult(ds.name, files=len(discover([ds.docs])))
    with tempfile.TemporaryDirectory(prefix=f"eval-docs-{ds.name}-") as tmp:
        opts = UpOptions(nodes=args.nodes, shards=args.shards, replicas=args.replicas, port=-1, data_dir=Path(tmp))
        cluster = LocalCluster(opts)
        try:
            cluster.start()
            async with await Client.connect(cluster.url, request_timeout=60.0) as client:
                await client.wait_for_state("green", 120.0)
                t0 = time.perf_counter()
                stats = await ingest_paths(client, [ds.docs], IngestOptions())
                result.acked_s = time.perf_counter() - t0
                while not await all_applied(client, stats.tokens):
                    if dead := cluster.exited():
                        raise RuntimeError(f"exited: {', '.join(dead)}; see {cluster.logs}")
                    await asyncio.sleep(0.25)
                result.applied_s = time.perf_counter() - t0
                result.ingest = stats
                await Evaluator(client, ds, stats.tokens, args.k, args.depth, args.verbose).run(result)
        finally:
            cluster.stop()
    return result


def table(results: list[SetResult], k: int) -> str:
    head = f"{'set':12} {'files':>5} {'chunks':>6} {'questions':>9} " + " ".join(f"{m + '@' + str(k):>12}" for m in METHODS)
    head += f" {'retrieve p50/p95 ms':>20} {'ingest s (acked/applied)':>25}"
    lines = [head, "-" * len(head)]

    def row(name: str, files: int, chunks: int, n: int, answered: dict[str, int], lat: list[float], ack: float, app: float) -> str:
        cells = " ".join(f"{f'{answered[m]}/{n} {answered[m] / n:.2f}' if n else '-':>12}" for m in METHODS)
        return (f"{name:12} {files:>5} {chunks:>6} {n:>9} {cells} {f'{pct(lat, 0.5):.0f} / {pct(lat, 0.95):.0f}':>20}"
                f" {f'{ack:.1f} / {app:.1f}':>25}")

    for r in results:
        lines.append(row(r.name, r.files, r.ingest.chunks if r.ingest else 0, r.n, r.answered, r.latencies, r.acked_s, r.applied_s))
    if len(results) > 1:
        total = {m: sum(r.answered[m] for r in results) for m in METHODS}
        lines.append(row("overall", sum(r.files for r in results), sum(r.ingest.chunks if r.ingest else 0 for r in results),
                         sum(r.n for r in results), total, [x for r in results for x in r.latencies],
                         sum(r.acked_s for r in results), sum(r.applied_s for r in results)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_docs", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", help="folder holding <set>/docs/ (default: TORUA_EVAL_CORPORA, ../shared/corpora, bench/corpora)")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--depth", type=int, default=20, help="--verbose: how deep to look for the first answering chunk")
    p.add_argument("--sets", default="", help="comma-separated (default: every set whose docs are there)")
    p.add_argument("--verbose", "-v", action="store_true", help="print every miss")
    args = p.parse_args(argv)
    corpora = corpora_dir(args.corpora)
    sets = available_sets(corpora)
    names = [s for s in args.sets.split(",") if s] or sets
    unknown = [s for s in names if s not in sets]
    if unknown or not names:
        p.error(f"no documentation for set(s) {', '.join(unknown) or '(none)'} under {corpora}; have {', '.join(sets) or 'none'}"
                " (see bench/eval_docs_questions/<set>.SOURCE.md)")
    for var in ("TORUA_EMBEDDER", "TORUA_EMBEDDING_DIM"):
        if os.environ.get(var):
            print(f"note: {var}={os.environ[var]} is set and reaches the nodes", file=sys.stderr)
    started = time.perf_counter()
    data = [load_set(s, corpora) for s in names]
    results = []
    for ds in data:
        print(f"{ds.name}: {len(ds.questions)} questions; starting a cluster of {args.nodes} nodes, {args.shards} shards"
              f" x {args.replicas} and ingesting {ds.docs} ...", flush=True)
        r = asyncio.run(evaluate(ds, args))
        s = r.ingest
        assert s is not None
        print(f"  {s.summary()}; all applied after {r.applied_s:.1f}s", flush=True)
        results.append(r)
    print(f"\nanswered@{args.k}: a question counts when one of its answer strings is in one of the top {args.k} chunks\n")
    print(table(results, args.k))
    if args.verbose:
        for r in results:
            print(f"\n{r.name}: questions missed by at least one method")
            print("\n".join(r.misses) if r.misses else "  (none)")
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
