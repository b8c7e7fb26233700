"""The `torua` command line as a user runs it (a subprocess with NATS_URL) against a real cluster,
and the synchronous client facade."""

from __future__ import annotations

import inspect
import json
import random
import re
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torua import BadRequest, Client, Entity, SyncClient, Unavailable
from torua.up import LocalCluster

from tests.integration.conftest import SAMPLES, TORUA, running_cluster

pytestmark = pytest.mark.timeout(300)

@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cli"), nodes=2, shards=4, replicas=1) as cluster:
        with SyncClient.connect(cluster.url) as c:
            c.wait_for_state("green", 30)
        yield cluster


def torua(cluster: LocalCluster | None, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": cluster.url if cluster else "nats://127.0.0.1:1"}
    env.pop("TORUA_DEBUG", None)
    return subprocess.run([*TORUA, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def loaded(cli_cluster: LocalCluster) -> LocalCluster:
    run = torua(cli_cluster, "ingest", str(SAMPLES))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ingested 11 of 11 documents (0 already ingested, skipped): ")
    # The commands below carry no write tokens: poll until every replica has applied the corpus.
    with SyncClient.connect(cli_cluster.url) as c:
        deadline = time.monotonic() + 15
        while len(c.search_text("Lantern Guild", k=20).hits) < 3 or not c.search_text("Tidelamp", target="entities").hits:
            assert time.monotonic() < deadline, "sample corpus not searchable after ingest"
            time.sleep(0.1)
    return cli_cluster


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torua: "), run.stderr
    return lines[0]


def test_ingest_json_output(loaded: LocalCluster) -> None:
    run = torua(loaded, "ingest", str(SAMPLES), "--json")
    stats = json.loads(run.stdout)
    assert (stats["files"], stats["documents"], stats["skipped"]) == (11, 0, 11)
    assert run.stderr == ""


def test_search_human_and_json(loaded: LocalCluster) -> None:
    human = torua(loaded, "search", "Tidelamp", "--target", "entities", "-k", "3")
    assert human.returncode == 0, human.stderr
    header, rule, first = human.stdout.splitlines()[:3]
    assert header.split() == ["RANK", "ID", "SCORE", "SHARD", "NAME"]
    assert first.split()[:2] == ["1", "ent:tidelamp"] and first.rstrip().endswith("Tidelamp")
    for mode in ("text", "vector", "hybrid"):
        run = torua(loaded, "search", "lantern that burns seawater", "--mode", mode, "--json")
        reply = json.loads(run.stdout)
        assert reply["hits"] and reply["partial"] is False, mode
        assert all("#" in h["id"] for h in reply["hits"])  # chunk ids


def test_retrieve_human_and_json(loaded: LocalCluster) -> None:
    question = "Who taught the founder of the Lantern Guild?"
    human = torua(loaded, "retrieve", question, "-k", "3")
    assert human.returncode == 0, human.stderr
    out = human.stdout
    assert re.match(rf"Question: {re.escape(question)}\n\nTop passages \(3\):\n  1\. \[[^\]\s]+#\d+\]  score ", out), out
    assert "Orrin Vale" in out and "Relations on the paths:" in out
    assert "Mira Okonkwo -FOUNDED-> Lantern Guild" in out
    data = json.loads(torua(loaded, "retrieve", question, "--json", "--hops", "2").stdout)
    assert set(data) >= {"context", "chunks", "entities", "relations", "partial"}
    assert any("Orrin Vale" in c["text"] for c in data["chunks"])


def test_answer_without_llm_is_a_clear_503(loaded: LocalCluster) -> None:
    line = one_line_error(torua(loaded, "answer", "Who founded the Lantern Guild?"))
    assert "TORUA_LLM_URL" in line
    with pytest.raises(Unavailable, match="TORUA_LLM_URL"):
        with SyncClient.connect(loaded.url) as c:
            c.answer("Who founded the Lantern Guild?")


def test_query_human_and_json(loaded: LocalCluster) -> None:
    cypher = "MATCH (e:Entity) WHERE e.name STARTS WITH $p RETURN e.id AS id, e.name AS name ORDER BY id"
    run = torua(loaded, "query", cypher, "--param", "p=Orrin", "--json")
    if run.returncode and "torua.graph.query" in run.stderr:
        one_line_error(run)  # not served by this build yet: still a clean one-line error
        pytest.skip("torua.graph.query is not served yet")
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert reply["columns"] == ["id", "name"] and ["ent:orrin-vale", "Orrin Vale"] in reply["rows"]
    human = torua(loaded, "query", cypher, "-p", "p=Orrin")
    assert human.stdout.splitlines()[0].split() == ["id", "name"] and "ent:orrin-vale" in human.stdout


def test_errors_are_one_line(loaded: LocalCluster, tmp_path: Path) -> None:
    assert "cannot connect to NATS at nats://127.0.0.1:1" in one_line_error(torua(None, "--timeout", "1", "status"))
    assert "no such file or directory" in one_line_error(torua(loaded, "ingest", str(tmp_path / "nope")))
    assert "hops" in one_line_error(torua(loaded, "retrieve", "x", "--hops", "9"))
    assert "--overlap" in one_line_error(torua(loaded, "ingest", str(SAMPLES), "--max-tokens", "8", "--overlap", "8"))
    usage = torua(loaded, "search", "x", "-k", "0")
    assert usage.returncode == 2 and "must be at least 1" in usage.stderr


def test_ingest_leaves_out_what_it_cannot_read(cli_cluster: LocalCluster, tmp_path: Path) -> None:
    """Binary content (whatever the extension), bytes in no detectable encoding, a file the OS cannot
    read and a bad JSONL file are each left out with a warning; the rest is ingested, exit 1."""
    rng = random.Random(7)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.md").write_text("Quillon Brack founded the Ostrander Foundry in Veyhaven.\n")
    (corpus / "latin.md").write_bytes("Élodie Façade opened the Brûlé Observatory near Zürich.\n".encode("latin-1"))
    (corpus / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(4000))
    (corpus / "noise.md").write_bytes(rng.randbytes(300_000))
    (corpus / "bad.jsonl").write_text('{"entities": []}\n{not json}\n')
    (corpus / "unreadable.md").symlink_to("/proc/self/mem")  # a regular file whose read fails (EIO), even as root

    run = torua(cli_cluster, "ingest", str(corpus), "--json")
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    warned = {line.split(": ", 2)[1].rsplit("/", 1)[-1].split(":")[0]
              for line in run.stderr.splitlines() if line.startswith("warning: left out ")}
    assert warned == {"image.txt", "noise.md", "bad.jsonl", "unreadable.md"}, run.stderr
    assert "bad.jsonl:2: not a graph line" in run.stderr and "binary content" in run.stderr
    stats = json.loads(run.stdout)
    assert stats["documents"] == 2 and len(stats["unreadable"]) == 4

    with SyncClient.connect(cli_cluster.url) as c:
        texts = [ch.text for ch in c.retrieve("Brûlé Observatory near Zürich", k=5, hops=0).chunks]
        assert any("Élodie Façade opened the Brûlé Observatory near Zürich." in t for t in texts), texts
        assert any("Ostrander Foundry" in ch.text for ch in c.retrieve("Ostrander Foundry", k=5, hops=0).chunks)
        assert not any("IHDR" in ch.text or "\ufffd" in ch.text for ch in c.retrieve("IHDR PNG", k=20, hops=0).chunks)


def test_blank_question_is_a_400_naming_the_field(cli_cluster: LocalCluster) -> None:
    line = one_line_error(torua(cli_cluster, "retrieve", "  \t "))
    assert "not blank" in line and "question" in line
    with SyncClient.connect(cli_cluster.url) as c, pytest.raises(BadRequest, match=r"not blank.*\$\.text"):
        c.search_text("   ")


def test_status_still_works(loaded: LocalCluster) -> None:
    run = torua(loaded, "status", "--json")
    assert json.loads(run.stdout)["info"]["state"] == "green"


# --- the synchronous client -----------------------------------------------------------------------


def test_sync_client_has_every_async_method() -> None:
    public = {n for n, f in inspect.getmembers(Client, inspect.iscoroutinefunction) if not n.startswith("_")}
    for name in public - {"close"}:
        assert callable(getattr(SyncClient, name)), name
        if name != "connect":
            assert inspect.signature(getattr(SyncClient, name)) == inspect.signature(getattr(Client, name))


def test_sync_client_round_trip(cli_cluster: LocalCluster) -> None:
    with SyncClient.connect(cli_cluster.url) as c:
        reply = c.upsert(entities=[Entity(id="sync:ada", name="Ada Lovelace", type="person")])
        assert c.get("sync:ada", after=reply.tokens).entity.name == "Ada Lovelace"
        assert c.cluster_info().state == "green"
        token = c.kv_put("sync:key", "v1").token
        assert c.kv_get("sync:key", after=token) == "v1"
    with pytest.raises(RuntimeError, match="closed"):
        c.cluster_info()


def test_sync_client_connect_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot connect to NATS at nats://127.0.0.1:1 within 1s"):
        SyncClient.connect("nats://127.0.0.1:1", timeout=1)
    assert time.monotonic() - started < 5
