"""A small client for any OpenAI-compatible HTTP API (`/chat/completions`, `/embeddings`).

Ollama, vLLM, llama.cpp's server and OpenAI itself all speak this dialect. What matters here is
failing well: 429 and 5xx replies, timeouts, refused connections and malformed JSON are retried
with jittered exponential backoff, requests are spaced by a rate limit, and after the last attempt
the caller gets one `LLMError` that names the URL and what went wrong — never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from torua.errors import Unavailable

__all__ = ["LLMError", "LLMSettings", "OpenAIConfig", "OpenAICompatible", "RateLimiter", "endpoint_url"]

T = TypeVar("T")
# Statuses worth another try: rate limited, or the server (or a proxy in front of it) failing.
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_MAX_RETRY_AFTER_S = 30.0


class LLMError(Unavailable):
    """The model endpoint failed after every retry (a 503: worth retrying later)."""


class LLMSettings(BaseSettings):
    """`TORUA_LLM_*`: the chat model used by `rag.answer` and the LLM extractor."""

    model_config = SettingsConfigDict(env_prefix="TORUA_", extra="ignore", frozen=True)

    llm_url: str | None = Field(None, description="base URL of an OpenAI-compatible API, e.g. http://localhost:11434/v1")
    llm_model: str = Field("llama3.2", min_length=1)
    llm_api_key: str | None = None
    llm_timeout: float = Field(60.0, gt=0, le=3600)
    llm_retries: int = Field(2, ge=0, le=10)
    # Requests per second to the model endpoint, from this process (0: unlimited).
    llm_rate: float = Field(0.0, ge=0)


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    url: str  # base URL (…/v1) or a full …/chat/completions or …/embeddings URL
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    retries: int = 2
    rate: float = 0.0  # requests per second, 0 = unlimited
    backoff: float = 0.5  # first retry delay in seconds, doubled each time
    setting: str = "TORUA_LLM"  # prefix of the settings named in errors, so users know what to fix

    @classmethod
    def from_llm_settings(cls, s: LLMSettings) -> OpenAIConfig:
        if not s.llm_url:
            raise LLMError("no LLM is configured: set TORUA_LLM_URL to an OpenAI-compatible API (and TORUA_LLM_MODEL)")
        return cls(s.llm_url, s.llm_model, s.llm_api_key, s.llm_timeout, s.llm_retries, s.llm_rate)


def endpoint_url(base: str, path: str) -> str:
    """`http://h/v1` + `chat/completions`; a URL that already ends with the path is kept."""
    base = base.rstrip("/")
    return base if base.endswith("/" + path) else f"{base}/{path}"


class RateLimiter:
    """Spaces request starts at least 1/rate seconds apart; shared by threads and event loops."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Seconds the caller must wait before starting its request."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
            return start - now


class _Retry(Exception):
    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after


class OpenAICompatible:
    """Sync and async calls with the same retry policy; one instance per endpoint."""

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self.limiter = RateLimiter(config.rate)
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._headers = headers

    # --- public calls --------------------------------------------------------------------------

    async def chat(self, messages: list[dict[str, str]], *, response_format: dict[str, Any] | None = None,
                   temperature: float = 0.0) -> str:
        body = self._chat_body(messages, response_format, temperature)
        return await self._post_async("chat/completions", body, _chat_content)

    async def chat_parsed(self, messages: list[dict[str, str]], parse: Callable[[str], T], *,
                          response_format: dict[str, Any] | None = None, temperature: float = 0.0) -> T:
        """Chat, then `parse` the content; a ValueError from `parse` is retried like a malformed reply."""
        body = self._chat_body(messages, response_format, temperature)
        return await self._post_async("chat/completions", body, lambda data: parse(_chat_content(data)))

    def embed(self, texts: list[str]) -> list[list[float]]:
        body = {"model": self.config.model, "input": texts}
        return self._post_sync("embeddings", body, lambda r: _embeddings(r, len(texts)))

    # --- transport -----------------------------------------------------------------------------

    def _chat_body(self, messages: list[dict[str, str]], response_format: dict[str, Any] | None,
                   temperature: float) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, "temperature": temperature}
        if response_format is not None:
            body["response_format"] = response_format
        return body

    def _delay(self, attempt: int, retry: _Retry) -> float:
        if retry.after is not None:
            return min(retry.after, _MAX_RETRY_AFTER_S)
        return self.config.backoff * 2**attempt * (0.5 + random.random())

    def _fail(self, url: str, attempts: int, reason: str) -> LLMError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        return LLMError(f"the model endpoint {url} ({self.config.setting}_URL) failed after {tries}: {reason}")

    def _post_sync(self, path: str, body: dict[str, Any], parse: Any) -> Any:
        url = endpoint_url(self.config.url, path)
        with httpx.Client(timeout=self.config.timeout, headers=self._headers) as http:
            for attempt in range(self.config.retries + 1):
                time.sleep(self.limiter.reserve())
                try:
                    return _handle(self._send(lambda: http.post(url, json=body)), parse)
                except _Retry as retry:
                    if attempt == self.config.retries:
                        raise self._fail(url, attempt + 1, retry.reason) from None
                    time.sleep(self._delay(attempt, retry))
        raise AssertionError("unreachable")

    async def _post_async(self, path: str, body: dict[str, Any], parse: Any) -> Any:
        url = endpoint_url(self.config.url, path)
        async with httpx.AsyncClient(timeout=self.config.timeout, headers=self._headers) as http:
            for attempt in range(self.config.retries + 1):
                await asyncio.sleep(self.limiter.reserve())
                try:
                    response = await self._send_async(http.post(url, json=body))
                    return _handle(response, parse)
                except _Retry as retry:
                    if attempt == self.config.retries:
                        raise self._fail(url, attempt + 1, retry.reason) from None
                    await asyncio.sleep(self._delay(attempt, retry))
        raise AssertionError("unreachable")

    def _send(self, call: Any) -> httpx.Response:
        try:
            return call()
        except httpx.TimeoutException:
            raise _Retry(f"no reply within {self.config.timeout:g}s ({self.config.setting}_TIMEOUT)") from None
        except httpx.HTTPError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None

    async def _send_async(self, call: Any) -> httpx.Response:
        try:
            # httpx bounds each read; this bounds the whole request, for a server that trickles bytes.
            return await asyncio.wait_for(call, self.config.timeout * 2)
        except (httpx.TimeoutException, TimeoutError):
            raise _Retry(f"no reply within {self.config.timeout:g}s ({self.config.setting}_TIMEOUT)") from None
        except httpx.HTTPError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None


def _handle(response: httpx.Response, parse: Any) -> Any:
    """The parsed reply, or _Retry for anything transient; a 4xx other than 429 fails at once."""
    if response.status_code in _RETRY_STATUS:
        raise _Retry(f"HTTP {response.status_code} {_snippet(response.text)}", _retry_after(response))
    if response.status_code >= 400:
        raise LLMError(
            f"the model endpoint {response.request.url} rejected the request with HTTP {response.status_code}: {_snippet(response.text)}"
        )
    try:
        # Parsing validates the shape too: a malformed reply is retried like a failure.
        return parse(json.loads(response.text))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _Retry(f"malformed reply ({type(exc).__name__}: {exc}): {_snippet(response.text)}") from None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _chat_content(data: Any) -> str:
    content = data["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError("choices[0].message.content is not a string")
    return content


def _embeddings(data: Any, n: int) -> list[list[float]]:
    rows = sorted(data["data"], key=lambda d: d.get("index", 0))
    vectors = [[float(x) for x in row["embedding"]] for row in rows]
    if len(vectors) != n:
        raise ValueError(f"asked for {n} embeddings, got {len(vectors)}")
    return vectors
