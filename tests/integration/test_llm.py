"""The model endpoint side: a small OpenAI-compatible HTTP server started by the test (real HTTP on
loopback), driven through success, 5xx, 429, malformed JSON and timeouts — against the LLM client,
the LLM extractor, and `torua.rag.answer` on a real cluster.

`OpenAIStub` is also used by test_embedders, test_cli and test_readme.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

from torua import Client, Unavailable
from torua.extract import GRAPH_SCHEMA, LLMExtractor
from torua.ingest import ingest_paths
from torua.llm import LLMError, OpenAICompatible, OpenAIConfig
from torua.up import LocalCluster

from tests.integration.conftest import SAMPLES, running_cluster

_PASSAGE = re.compile(r"^\[([^\]\n]+)\] ", re.MULTILINE)


def default_chat(body: dict[str, Any]) -> str:
    """Cites the first passage of the context, and an id that was never retrieved (to be filtered)."""
    prompt = body["messages"][-1]["content"]
    ids = _PASSAGE.findall(prompt)
    first = f" [{ids[0]}]" if ids else ""
    return f"Orrin Vale taught her.{first} See also [doc:not-retrieved#7]."


class OpenAIStub:
    """`/v1/chat/completions` and `/v1/embeddings` on 127.0.0.1:<random port>.

    `script` holds what the next requests get, in order: ("status", code[, retry_after]),
    ("malformed",), ("sleep", seconds), ("chat", content). When it is empty, chat replies come from
    `chat` (a function of the request body) and embeddings are deterministic vectors of `dim`.
    """

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.script: deque[tuple[Any, ...]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.chat: Callable[[dict[str, Any]], str] = default_chat
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                stub._serve(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.script.clear()
            self.requests.clear()
            self.chat = default_chat

    def paths(self) -> list[str]:
        with self._lock:
            return [r["path"] for r in self.requests]

    def _serve(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append({"path": h.path, "body": body, "auth": h.headers.get("Authorization")})
            step = self.script.popleft() if self.script else None
        if step is not None and step[0] == "sleep":
            time.sleep(step[1])
            step = None
        if step is not None and step[0] == "status":
            headers = {"Retry-After": str(step[2])} if len(step) > 2 else {}
            self._send(h, step[1], json.dumps({"error": {"message": "scripted failure"}}).encode(), headers)
            return
        if step is not None and step[0] == "malformed":
            self._send(h, 200, b'{"choices": [ this is not json')
            return
        if h.path.endswith("/embeddings"):
            data = [{"index": i, "embedding": self.vector(t)} for i, t in enumerate(body["input"])]
            self._send(h, 200, json.dumps({"object": "list", "data": data[::-1], "model": body["model"]}).encode())
            return
        content = step[1] if step is not None and step[0] == "chat" else self.chat(body)
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"),
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
        self._send(h, 200, json.dumps(reply).encode())

    def vector(self, text: str) -> list[float]:
        seed = xxhash.xxh64_intdigest(text.encode())
        return np.random.default_rng(seed).standard_normal(self.dim).round(6).tolist()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    s = OpenAIStub()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _fresh(stub: OpenAIStub) -> None:
    stub.reset()


def api(stub: OpenAIStub, **kw: Any) -> OpenAICompatible:
    cfg = dict(url=stub.url, model="stub-model", timeout=2.0, retries=2, backoff=0.01)
    cfg.update(kw)
    return OpenAICompatible(OpenAIConfig(**cfg))  # type: ignore[arg-type]


# --- the HTTP client ------------------------------------------------------------------------------


async def test_chat_success_sends_model_and_key(stub: OpenAIStub) -> None:
    stub.script.append(("chat", "hello"))
    assert await api(stub, api_key="sk-test").chat([{"role": "user", "content": "hi"}]) == "hello"
    (req,) = stub.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "stub-model"
    assert req["auth"] == "Bearer sk-test"


async def test_500_then_success_is_retried(stub: OpenAIStub) -> None:
    stub.script.extend([("status", 500), ("status", 503), ("chat", "third time")])
    assert await api(stub).chat([{"role": "user", "content": "hi"}]) == "third time"
    assert len(stub.requests) == 3


async def test_429_honours_retry_after_then_fails_clearly(stub: OpenAIStub) -> None:
    stub.script.extend([("status", 429, 0.3), ("chat", "ok")])
    started = time.monotonic()
    assert await api(stub).chat([{"role": "user", "content": "hi"}]) == "ok"
    assert time.monotonic() - started >= 0.3
    stub.script.extend([("status", 429)] * 3)
    with pytest.raises(LLMError) as err:
        await api(stub).chat([{"role": "user", "content": "hi"}])
    msg = err.value.description
    assert "HTTP 429" in msg and stub.url in msg and "3 attempts" in msg and "TORUA_LLM_URL" in msg
    assert err.value.code == 503


async def test_malformed_json_is_retried_then_reported(stub: OpenAIStub) -> None:
    stub.script.extend([("malformed",), ("chat", "fine")])
    assert await api(stub).chat([{"role": "user", "content": "hi"}]) == "fine"
    stub.script.extend([("malformed",)] * 3)
    with pytest.raises(LLMError, match="malformed reply"):
        await api(stub).chat([{"role": "user", "content": "hi"}])


async def test_timeout_names_the_setting(stub: OpenAIStub) -> None:
    stub.script.extend([("sleep", 1.5)] * 2)
    started = time.monotonic()
    with pytest.raises(LLMError, match=r"no reply within 0\.5s \(TORUA_LLM_TIMEOUT\)"):
        await api(stub, timeout=0.5, retries=1).chat([{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 3


async def test_client_errors_are_not_retried(stub: OpenAIStub) -> None:
    stub.script.append(("status", 401))
    with pytest.raises(LLMError, match="rejected the request with HTTP 401"):
        await api(stub).chat([{"role": "user", "content": "hi"}])
    assert len(stub.requests) == 1


async def test_unreachable_endpoint(stub: OpenAIStub) -> None:
    with pytest.raises(LLMError, match="ConnectError"):
        await api(stub, url="http://127.0.0.1:9/v1", retries=1).chat([{"role": "user", "content": "hi"}])


async def test_rate_limit_spaces_requests(stub: OpenAIStub) -> None:
    client = api(stub, rate=20.0)
    started = time.monotonic()
    await asyncio.gather(*(client.chat([{"role": "user", "content": str(i)}]) for i in range(5)))
    assert time.monotonic() - started >= 0.19  # 5 starts at least 1/20 s apart


# --- the LLM extractor ----------------------------------------------------------------------------

GRAPH = {
    "entities": [
        {"name": "Mira Okonkwo", "type": "Person", "description": "Founder of the Lantern Guild."},
        {"name": "The Lantern Guild", "type": "organization", "description": "Keeps the lighthouses."},
    ],
    "relations": [{"source": "Mira Okonkwo", "target": "Lantern Guild", "type": "founded"},
                  {"source": "Mira Okonkwo", "target": "Port Ardent", "type": "born in"}],
}


async def test_llm_extractor_sends_schema_and_maps_ids(stub: OpenAIStub) -> None:
    stub.script.append(("chat", "```json\n" + json.dumps(GRAPH) + "\n```"))
    ex = await LLMExtractor(OpenAIConfig(stub.url, "stub-model", backoff=0.01)).extract("doc:1#0", "Mira founded it.")
    fmt = stub.requests[0]["body"]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == GRAPH_SCHEMA
    assert {e.id: e.type for e in ex.entities} == {
        "ent:mira-okonkwo": "person", "ent:lantern-guild": "organization", "ent:port-ardent": "city"}
    assert {(r.source, r.type, r.target) for r in ex.relations} == {
        ("ent:mira-okonkwo", "FOUNDED", "ent:lantern-guild"), ("ent:mira-okonkwo", "BORN_IN", "ent:port-ardent")}
    assert all(r.chunks == ["doc:1#0"] for r in ex.relations)


async def test_llm_extractor_retries_invalid_output_then_fails(stub: OpenAIStub) -> None:
    stub.script.extend([("chat", "Sure! Here are the entities: Mira"), ("chat", json.dumps(GRAPH))])
    ex = await LLMExtractor(OpenAIConfig(stub.url, "m", backoff=0.01)).extract("c", "text")
    assert len(ex.entities) == 3 and len(stub.requests) == 2
    stub.script.extend([("chat", '{"entities": "nope"}')] * 3)
    with pytest.raises(LLMError, match="not a JSON graph"):
        await LLMExtractor(OpenAIConfig(stub.url, "m", backoff=0.01)).extract("c", "text")


# --- rag.answer on a real cluster -----------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_cluster(stub: OpenAIStub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {"TORUA_LLM_URL": stub.url, "TORUA_LLM_MODEL": "stub-model", "TORUA_LLM_TIMEOUT": "1",
           "TORUA_LLM_RETRIES": "1"}
    with running_cluster(tmp_path_factory.mktemp("llm"), nodes=2, shards=4, replicas=1, **env) as cluster:
        yield cluster


@pytest.fixture
async def loaded(llm_cluster: LocalCluster) -> AsyncIterator[Client]:
    client = await Client.connect(llm_cluster.url, request_timeout=10.0)
    await client.wait_for_state("green", 30)
    stats = await ingest_paths(client, [SAMPLES])
    client.after = stats.tokens  # type: ignore[attr-defined]
    yield client
    await client.close()


async def test_answer_cites_only_retrieved_chunks(loaded: Client, stub: OpenAIStub) -> None:
    question = "Who taught the founder of the Lantern Guild?"
    reply = await loaded.answer(question, k=3, after=loaded.after)  # type: ignore[attr-defined]
    assert reply.answer.startswith("Orrin Vale taught her.")
    assert reply.model == "stub-model"
    retrieved = [c.id for c in reply.chunks]
    assert len(reply.citations) == 1 and reply.citations[0] == retrieved[0]
    assert "doc:not-retrieved#7" not in reply.citations
    prompt = stub.requests[-1]["body"]["messages"][-1]["content"]
    assert question in prompt and reply.context in prompt and f"[{retrieved[0]}]" in reply.context


async def test_answer_retries_a_500(loaded: Client, stub: OpenAIStub) -> None:
    stub.script.append(("status", 500))
    reply = await loaded.answer("Where was the founder of the Lantern Guild born?")
    assert reply.citations
    assert stub.paths() == ["/v1/chat/completions"] * 2


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("status", 429)] * 2, "HTTP 429"),
        ([("status", 500)] * 2, "HTTP 500"),
        ([("malformed",)] * 2, "malformed reply"),
        ([("sleep", 2.5)] * 2, "no reply within 1s (TORUA_LLM_TIMEOUT)"),
    ],
    ids=["429", "500", "malformed", "timeout"],
)
async def test_answer_llm_failures_are_clear_503s(
    loaded: Client, stub: OpenAIStub, steps: list[tuple[Any, ...]], expected: str
) -> None:
    stub.script.extend(steps)
    with pytest.raises(Unavailable) as err:
        await loaded.answer("Who commands the ship that the Hollow Forge built?", timeout=20)
    assert err.value.code == 503
    assert expected in err.value.description and "after 2 attempts" in err.value.description
    assert "Traceback" not in err.value.description


def test_citations_are_parsed_and_filtered() -> None:
    from torua_node.rag.answer import cited

    text = "A [doc:a#0]. B [doc:b#1, doc:zz#9]; C [`doc:a#0`] [doc:c#2][see doc:b#1] [doc:b#1]."
    assert cited(text, ["doc:a#0", "doc:b#1", "doc:c#2"]) == ["doc:a#0", "doc:b#1", "doc:c#2"]
    assert cited("no brackets here", ["doc:a#0"]) == []


async def test_cli_answer_human_and_json(loaded: Client, llm_cluster: LocalCluster) -> None:
    import os
    import subprocess
    import sys

    script = Path(sys.executable).with_name("torua")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "torua.cli"]
    env = {**os.environ, "NATS_URL": llm_cluster.url}
    question = "Who taught the founder of the Lantern Guild?"

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, "answer", question, *extra], capture_output=True, text=True, env=env, timeout=60)

    human = await asyncio.to_thread(run)
    assert human.returncode == 0, human.stderr
    answer, _, cites = human.stdout.partition("\n\nCitations:\n")
    assert answer.startswith("Orrin Vale taught her. [") and cites.startswith("  [")
    data = json.loads((await asyncio.to_thread(run, "--json", "-k", "2")).stdout)
    assert data["citations"] == [data["chunks"][0]["id"]] and data["model"] == "stub-model"
