"""Every example in README.md runs against a live cluster, so none can rot.

- Each ```python block runs as its own program, in the order the README shows them, with NATS_URL
  set to the live cluster (and the default URL, if written out, replaced by it).
- Each `nats req <subject> '<json>'` line (in any code block) is sent with nats-py; the reply must
  not be an error, unless the example documents that error code on its line or the comment line
  before it (e.g. `# 503 until an LLM is configured`).
- The README must contain examples at all, and a `nats req` example for every public subject.

The cluster has an LLM configured (a local OpenAI-compatible stub), so `torua.rag.answer` works.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from torua import subjects
from torua.client import Client
from torua.connect import connect
from torua.up import LocalCluster

from tests.conftest import wait_for
from tests.integration.conftest import running_cluster
from tests.integration.test_llm import OpenAIStub

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEFAULT_URLS = ("nats://127.0.0.1:4222", "nats://localhost:4222")
_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_NATS_REQ = re.compile(r"\bnats\s+(?:(?:-s|--server)[ =]\S+\s+)*req(?:uest)?\s+(\S+)\s+'([^']*)'([^\n]*)")
_ERROR_CODE = re.compile(r"\b(400|404|409|413|503)\b")
PUBLIC_SUBJECTS = sorted(
    value for name, value in vars(subjects).items()
    if name.isupper() and isinstance(value, str) and value.startswith("torua.")
    and "*" not in value and ">" not in value  # wildcards are stream filters, not request subjects
    # Not requests a `nats req` user sends: a node's announcement, and the client's direct search,
    # which every node answers (docs/api.md, "Direct vector search").
    and name not in ("ANNOUNCE", "SHARD_VECTOR_ALL")
)


@dataclass(frozen=True)
class Example:
    kind: str  # "python" | "nats"
    line: int  # where it starts in README.md
    code: str = ""
    subject: str = ""
    payload: str = ""
    expected_error: int | None = None

    @property
    def label(self) -> str:
        return f"README.md:{self.line} " + (f"nats req {self.subject}" if self.kind == "nats" else "python block")


def parse(text: str) -> list[Example]:
    out: list[Example] = []
    for fence in _FENCE.finditer(text):
        lang, body = fence.group(1).lower(), fence.group(2)
        start = text.count("\n", 0, fence.start(2)) + 1
        if lang in ("python", "py", "python3"):
            out.append(Example("python", start, code=body))
            continue
        for m in _NATS_REQ.finditer(body):
            line_no = body.count("\n", 0, m.start())
            prev = body.splitlines()[line_no - 1] if line_no > 0 else ""
            note = m.group(3) + (prev if prev.lstrip().startswith("#") else "")
            code = _ERROR_CODE.search(note)
            subject = re.sub(r"<[^>]+>|\bNODE_ID\b", "node-1", m.group(1))
            out.append(Example("nats", start + line_no, subject=subject, payload=m.group(2),
                               expected_error=int(code.group(1)) if code else None))
    return out


EXAMPLES = parse(README.read_text(encoding="utf-8")) if README.exists() else []


def test_parser_finds_both_kinds() -> None:
    sample = (
        "text\n```python\nprint(1)\n```\n```sh\n# 503 until an LLM is configured\n"
        "nats req torua.rag.answer '{\"question\": \"q\"}'\n"
        "nats --server nats://h:4222 req torua.node.<id>.health '{}'   # works\n```\n"
    )
    got = parse(sample)
    assert [(e.kind, e.line) for e in got] == [("python", 3), ("nats", 7), ("nats", 8)]
    assert (got[1].subject, got[1].payload, got[1].expected_error) == ("torua.rag.answer", '{"question": "q"}', 503)
    assert (got[2].subject, got[2].expected_error) == ("torua.node.node-1.health", None)


def test_readme_has_examples() -> None:
    python = [e for e in EXAMPLES if e.kind == "python"]
    nats = [e for e in EXAMPLES if e.kind == "nats"]
    assert python, "README.md has no ```python example (the Python client in at most 15 lines)"
    assert nats, "README.md has no `nats req <subject> '<json>'` example"
    for e in python:
        lines = [ln for ln in e.code.strip().splitlines() if ln.strip()]
        assert len(lines) <= 15, f"{e.label}: {len(lines)} lines; the client example should fit in 15"


def test_every_public_subject_has_a_nats_req_example() -> None:
    shown = {e.subject for e in EXAMPLES if e.kind == "nats"}
    missing = [s for s in PUBLIC_SUBJECTS if s not in shown]
    assert not missing, f"README.md has no `nats req` example for: {', '.join(missing)}"


@pytest.fixture(scope="module")
def readme_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    stub = OpenAIStub()
    env = {"TORUA_LLM_URL": stub.url, "TORUA_LLM_MODEL": "stub-model", "TORUA_LLM_TIMEOUT": "5"}
    # The shape `make run` starts (3 nodes, 8 shards x 2 replicas): what a reader following the README has.
    try:
        with running_cluster(tmp_path_factory.mktemp("readme"), nodes=3, shards=8, replicas=2, **env) as cluster:
            yield cluster
    finally:
        stub.close()


def run_python(example: Example, url: str, cwd: Path) -> str | None:
    code = example.code
    for default in DEFAULT_URLS:
        code = code.replace(default, url)
    env = {**os.environ, "NATS_URL": url, "PYTHONPATH": str(ROOT)}
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                             timeout=120)
    except subprocess.TimeoutExpired:
        return f"{example.label}: did not finish within 120s"
    if run.returncode != 0:
        return f"{example.label}: exit {run.returncode}\n{run.stderr[-1500:]}"
    return None


async def send(nc, example: Example) -> str | None:  # type: ignore[no-untyped-def]
    try:
        payload = json.loads(example.payload) if example.payload.strip() else {}
    except json.JSONDecodeError as exc:
        return f"{example.label}: the example's JSON does not parse ({exc})"
    try:
        msg = await nc.request(example.subject, json.dumps(payload).encode(), timeout=30)
    except Exception as exc:  # noqa: BLE001 - reported below with the example's line
        return f"{example.label}: no reply ({type(exc).__name__})"
    code = (msg.headers or {}).get("Nats-Service-Error-Code")
    if code is None:
        reply = json.loads(msg.data)  # a JSON reply
        await settle(Client(nc), reply)
        return None
    if example.expected_error is not None and int(code) == example.expected_error:
        return None
    return f"{example.label}: error {code}: {msg.data.decode()[:300]}"


async def settle(client: Client, reply: object) -> None:
    """After a write example, wait until every replica has applied it, as a reader typing the next
    command would: README reads carry no write tokens, and must not race the write before them."""
    tokens = (reply.get("tokens") or reply.get("token") or {}) if isinstance(reply, dict) else {}
    if not tokens:
        return
    nodes = [n.id for n in (await client.cluster_nodes()).nodes]

    async def applied() -> bool:
        for node in nodes:
            for r in (await client.node_info(node)).replicas:
                if r.get("applied_seq", 0) < tokens.get(str(r.get("shard")), 0):
                    return False
        return True

    await wait_for(applied, timeout=15, what=f"replicas to apply {tokens}")


async def test_readme_examples_run(readme_cluster: LocalCluster, tmp_path: Path) -> None:
    if not EXAMPLES:
        pytest.fail("README.md has no examples to run")
    nc = await connect(readme_cluster.url, name="readme-test")
    try:
        await Client(nc).wait_for_state("green", 30)
        failures = []
        for example in EXAMPLES:  # in README order: later examples may read what earlier ones wrote
            if example.kind == "python":
                problem = run_python(example, readme_cluster.url, tmp_path)
            else:
                problem = await send(nc, example)
            if problem:
                failures.append(problem)
    finally:
        await nc.close()
    assert not failures, "README examples failed:\n" + "\n\n".join(failures)
