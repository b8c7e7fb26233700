"""Ingestion end to end on a real cluster: the sample corpus, 1,000 generated documents, the progress
bar, idempotence (a second run writes nothing: the WAL's last sequence stays put), pre-extracted
JSONL graphs, relation provenance across documents, and client-side embedding."""

from __future__ import annotations

import json
import re
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from torua import BadRequest, Client
from torua.embedders import EmbedderSettings, make_embedder
from torua.embedding import HashEmbedder
from torua.extract import entity_id
from torua.ingest import IngestOptions, Progress, discover, document_id, ingest_paths, ingest_texts
from torua.subjects import WAL_STREAM
from torua.synthetic import multihop_corpus
from torua.up import LocalCluster

from tests.integration.conftest import SAMPLES, TORUA, running_cluster

pytestmark = pytest.mark.timeout(300)

@pytest.fixture(scope="module")
def ingest_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("ingest"), nodes=2, shards=4, replicas=2) as cluster:
        yield cluster


@pytest.fixture
async def client(ingest_cluster: LocalCluster) -> AsyncIterator[Client]:
    c = await Client.connect(ingest_cluster.url, request_timeout=10.0)
    await c.wait_for_state("green", 30)
    yield c
    await c.close()


async def wal_last_seq(client: Client) -> int:
    return (await client.nc.jetstream().stream_info(WAL_STREAM)).state.last_seq


def torua(cluster: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": cluster.url}
    return subprocess.run([*TORUA, *args], capture_output=True, text=True, env=env, timeout=timeout)


async def test_sample_corpus_end_to_end(client: Client) -> None:
    stats = await ingest_paths(client, [SAMPLES])
    assert stats.files == 11 and stats.documents == 11 and stats.skipped == 0
    assert stats.chunks >= 12 and stats.entities >= 20 and stats.relations >= 40

    # Multi-hop questions about the sample world: the answer is in the retrieved passages.
    questions = json.loads((SAMPLES / "questions.json").read_text())["questions"]
    for q in questions:
        reply = await client.retrieve(q["question"], k=5, hops=q["hops"], after=stats.tokens)
        assert any(q["answer"] in c.text for c in reply.chunks), (q, [c.text[:60] for c in reply.chunks])

    # Ids are content hashes: the document of a file is found under the hash of its bytes.
    mira = document_id((SAMPLES / "mira-okonkwo.md").read_bytes())
    assert await client.kv_get(f"ingested:{mira}", after=stats.tokens)

    # A relation's provenance is the chunk that states it; pre-extracted JSONL relations keep theirs.
    hood = await client.neighbors([entity_id("Mira Okonkwo")], hops=1, direction="out", after=stats.tokens)
    edges = {(e.type, e.target): e.chunks for e in hood.edges if e.source == entity_id("Mira Okonkwo")}
    assert edges[("TAUGHT_BY", entity_id("Orrin Vale"))] == [f"{mira}#0"]
    storm = await client.neighbors(["ent:long-storm"], hops=1, direction="out", after=stats.tokens)
    assert {e.type for e in storm.edges} == {"LED_TO_FOUNDING_OF", "STRUCK"}

    # The second run is a no-op: nothing reaches the write-ahead log.
    before = await wal_last_seq(client)
    again = await ingest_paths(client, [SAMPLES])
    assert (again.documents, again.skipped, again.batches) == (0, 11, 0)
    assert await wal_last_seq(client) == before


async def test_provenance_accumulates_across_runs(client: Client) -> None:
    a = "Kessa Lorn founded the Amber Works. The Amber Works makes glass."
    b = "Everyone knows that Kessa Lorn founded the Amber Works long ago."
    first = await ingest_texts(client, {"a": a})
    second = await ingest_texts(client, {"b": b})
    tokens = {**first.tokens, **{k: max(v, first.tokens.get(k, 0)) for k, v in second.tokens.items()}}
    hood = await client.neighbors([entity_id("Kessa Lorn")], hops=1, direction="out", after=tokens)
    (edge,) = [e for e in hood.edges if e.type == "FOUNDED"]
    assert edge.chunks == sorted([f"{document_id(a.encode())}#0", f"{document_id(b.encode())}#0"])


async def test_thousand_generated_documents_with_the_cli(
    client: Client, ingest_cluster: LocalCluster, tmp_path: Path
) -> None:
    corpus = multihop_corpus(seed=7, chains=100, distractors=6)
    assert len(corpus.chunks) == 1000
    folder = tmp_path / "generated"
    for i, c in enumerate(corpus.chunks):
        sub = folder / f"part-{i % 4}"  # directories are walked recursively
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc-{i:04d}.{'md' if i % 2 else 'txt'}").write_text(f"Note {i}\n\n{c.text}\n")

    started = time.monotonic()
    run = torua(ingest_cluster, "ingest", str(folder), "--progress", "--json", "--concurrency", "4")
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-2000:]
    stats = json.loads(run.stdout)
    assert (stats["files"], stats["documents"], stats["skipped"]) == (1000, 1000, 0)
    assert stats["chunks"] == 1000 and stats["entities"] > 500 and stats["relations"] > 500
    assert elapsed < 60, f"1,000 documents took {elapsed:.1f}s"
    # The progress bar was drawn on stderr (forced: stderr is a pipe here), ending complete. (Text
    # mode turned its carriage returns into newlines.)
    frames = [f for f in run.stderr.splitlines() if f.strip()]
    assert len(frames) >= 3
    assert frames[-1].strip().startswith("ingest [" + "#" * 30 + "] 1000/1000 documents 100%")

    tokens = {k: int(v) for k, v in stats["tokens"].items()}
    # Graph retrieval on what the default extractor found reaches the first fact of every two-hop
    # question (the second: test_two_hop_questions_on_heuristic_prose, a known regression).
    texts = {c.id: c.text for c in corpus.chunks}
    for q in [q for q in corpus.questions if q.hops == 2][:20]:
        reply = await client.retrieve(q.text, k=5, hops=2, after=tokens)
        got = {c.text.split("\n\n", 1)[-1].strip() for c in reply.chunks}
        assert texts[q.supporting[0]] in got, q.text
    TWO_HOP_PROSE["tokens"] = tokens

    # Second run: nothing written, and quick.
    before = await wal_last_seq(client)
    again = torua(ingest_cluster, "ingest", str(folder))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ingested 0 of 1000 documents (1000 already ingested, skipped)" in again.stdout
    assert await wal_last_seq(client) == before
    assert again.stderr == ""  # no progress bar when stderr is not a terminal and --progress is not given


TWO_HOP_PROSE: dict[str, dict[str, int]] = {}


@pytest.mark.xfail(strict=True, reason=(
    "known regression of the retrieval ranking (docs/retrieval.md, 'Known gaps'): every second fact "
    "in this corpus ('X runs its main offices out of Y') is an untyped RELATED_TO guess of the heuristic "
    "extractor, which now passes on little weight, so the company's typed facts (its employees) outrank it"
))
async def test_two_hop_questions_on_heuristic_prose(client: Client) -> None:
    """Both facts of two-hop questions over text the heuristic extractor read (the previous ranking
    got 12/20 here, partly by breaking ties between the fact and the company's other facts by id)."""
    tokens = TWO_HOP_PROSE.get("tokens")
    if tokens is None:
        pytest.skip("needs test_thousand_generated_documents_with_the_cli's cluster contents")
    corpus = multihop_corpus(seed=7, chains=100, distractors=6)
    texts = {c.id: c.text for c in corpus.chunks}
    two_hop = [q for q in corpus.questions if q.hops == 2][:20]
    found = 0
    for q in two_hop:
        reply = await client.retrieve(q.text, k=5, hops=2, after=tokens)
        got = {c.text.split("\n\n", 1)[-1].strip() for c in reply.chunks}
        found += all(texts[s] in got for s in q.supporting)
    assert found >= len(two_hop) * 0.4, f"only {found}/{len(two_hop)} two-hop questions fully retrieved"


async def test_jsonl_graphs_and_bad_input(client: Client, tmp_path: Path) -> None:
    good = tmp_path / "graph.jsonl"
    line = {"entities": [{"id": "x:ada", "name": "Ada", "type": "person"}, {"id": "x:bob", "name": "Bob"}],
            "relations": [{"source": "x:ada", "target": "x:bob", "type": "KNOWS"}]}
    good.write_text(json.dumps(line) + "\n\n" + json.dumps({"entities": [{"id": "x:cy", "name": "Cy"}]}) + "\n")
    stats = await ingest_paths(client, [good])
    assert (stats.documents, stats.entities, stats.relations) == (1, 3, 1)
    assert (await client.get("x:cy", after=stats.tokens)).entity.name == "Cy"
    assert (await ingest_paths(client, [good])).skipped == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(line) + "\n" + '{"entities": [{"name": "no id"}]}\n')
    stats = await ingest_paths(client, [bad])  # left out whole: its good first line is not written either
    assert stats.documents == 0 and stats.entities == 0
    assert len(stats.unreadable) == 1 and re.search(r"bad\.jsonl:2: not a graph line .*id", stats.unreadable[0])
    with pytest.raises(BadRequest, match="no such file or directory"):
        await ingest_paths(client, [tmp_path / "missing"])
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(BadRequest, match="unsupported file type .png"):
        discover([tmp_path / "image.png"])
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.md").write_text("Hidden Thing")
    assert all(".hidden" not in str(p) for p in discover([tmp_path]))


async def test_client_side_embedder_must_match_the_cluster(client: Client) -> None:
    dim = (await client.cluster_info()).embedding_dim
    text = {"v": "Vessa Quill painted the Harbour Gate in Tessaly."}
    stats = await ingest_texts(client, text, IngestOptions(force=True), embedder=make_embedder(dim, EmbedderSettings()))
    assert stats.documents == 1
    # Same vectors as the cluster computes: a vector search with the text finds the chunk first.
    hits = await client.search_vector(text=text["v"], k=1, after=stats.tokens)
    assert hits.hits[0].id == f"{document_id(text['v'].encode())}#0"
    with pytest.raises(BadRequest, match=f"embedding_dim is {dim}"):
        await ingest_texts(client, {"w": "other"}, embedder=HashEmbedder(dim + 1))


def test_progress_line() -> None:
    import io

    out = io.StringIO()
    p = Progress(out, enabled=True)
    p.start(4)
    p.advance(1)
    p.advance(3, note="writing")
    p.close()
    frames = out.getvalue().split("\r")
    assert frames[1].startswith("ingest [------------------------------] 0/4 documents   0%")
    assert frames[-1].startswith("ingest [" + "#" * 30 + "] 4/4 documents 100%")
    assert frames[-1].rstrip().endswith("done") and frames[-1].endswith("\n")
    quiet = io.StringIO()
    Progress(quiet).start(3)  # a StringIO is not a terminal: nothing drawn
    assert quiet.getvalue() == ""
