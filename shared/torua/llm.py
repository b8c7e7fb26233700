"""A client for any OpenAI-compatible HTTP API (`/chat/completions`, `/embeddings`), on the `openai` SDK.

Ollama, vLLM, llama.cpp's server and OpenAI itself all speak this dialect. What matters here is
failing well. The SDK retries 408, 409, 429 and 5xx replies, timeouts and refused connections with
jittered exponential backoff, honouring Retry-After; a reply that is not the JSON asked for (or that
the caller's parser refuses) is retried here, with tenacity, from the same budget of attempts;
request starts are spaced by a rate limit; and after the last attempt the caller gets one
`LLMError` that names the URL and what went wrong — never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception_type

from torua.errors import Unavailable

if TYPE_CHECKING:  # imported on first use: half a second that a process without a model never pays
    import openai

__all__ = ["LLMError", "LLMSettings", "OpenAIConfig", "OpenAICompatible", "RateLimiter", "endpoint_url"]

T = TypeVar("T")
# Statuses the SDK retries (a 5xx too): rate limited, or the server (or a proxy in front of it) failing.
_RETRIED_STATUS = {408, 409, 429}
_PATHS = ("chat/completions", "embeddings")
# The SDK insists on a key; with none configured this one is sent to nobody (see `_before_request`).
_NO_KEY = "no-key"


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
    retries: int = 2  # attempts after the first, whatever failed
    rate: float = 0.0  # requests per second, 0 = unlimited
    backoff: float = 0.5  # first delay before asking again after a malformed reply, doubled each time
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


def _base_url(url: str) -> str:
    """The SDK's base URL: the configured one without a trailing endpoint path."""
    url = url.rstrip("/")
    for path in _PATHS:
        if url.endswith("/" + path):
            return url[: -len(path) - 1]
    return url


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


class _Malformed(Exception):
    """A reply that is not what was asked for: retried like a failed request."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Attempts:
    """Requests one call has sent so far, the SDK's retries included."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0


# The call in progress in this task or thread, counted by the HTTP client's request hook.
_CALL: ContextVar[_Attempts | None] = ContextVar("torua_llm_call", default=None)


class _Request(Protocol):
    """What the request hook uses of the HTTP client's request."""

    @property
    def headers(self) -> MutableMapping[str, str]: ...


class OpenAICompatible:
    """Chat (async) and embeddings (sync) with one retry policy; one instance per endpoint, each
    holding one pooled SDK client per kind, created on first use."""

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self.limiter = RateLimiter(config.rate)
        # SDK clients by retries left (sharing one connection pool): a malformed reply spends an
        # attempt, and the SDK gets only what is left of the budget for the next one.
        self._async: dict[int, openai.AsyncOpenAI] = {}
        self._sync: dict[int, openai.OpenAI] = {}

    # --- public calls --------------------------------------------------------------------------

    async def chat(self, messages: list[dict[str, str]], *, response_format: dict[str, Any] | None = None,
                   temperature: float = 0.0) -> str:
        return await self.chat_parsed(messages, _same, response_format=response_format, temperature=temperature)

    async def chat_parsed(self, messages: list[dict[str, str]], parse: Callable[[str], T], *,
                          response_format: dict[str, Any] | None = None, temperature: float = 0.0) -> T:
        """Chat, then `parse` the content; a ValueError from `parse` is retried like a malformed reply."""
        request: dict[str, Any] = {"model": self.config.model, "messages": messages, "temperature": temperature}
        if response_format is not None:
            request["response_format"] = response_format
        with self._call("chat/completions") as call:
            async for attempt in AsyncRetrying(**self._retrying(call)):
                with attempt:
                    raw = await self._async_api(call).chat.completions.with_raw_response.create(**request)
                    return _parsed(raw.text, lambda data: parse(_chat_content(data)))
        raise AssertionError("unreachable")

    def embed(self, texts: list[str]) -> list[list[float]]:
        with self._call("embeddings") as call:
            for attempt in Retrying(**self._retrying(call)):
                with attempt:
                    raw = self._sync_api(call).embeddings.with_raw_response.create(
                        model=self.config.model, input=texts, encoding_format="float"
                    )
                    return _parsed(raw.text, lambda data: _embeddings(data, len(texts)))
        raise AssertionError("unreachable")

    # --- the SDK clients -----------------------------------------------------------------------

    def _async_api(self, call: _Attempts) -> openai.AsyncOpenAI:
        import openai

        left = self.config.retries - call.sent
        if left not in self._async:
            if self.config.retries not in self._async:
                http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [self._before_request_async]})
                self._async[self.config.retries] = openai.AsyncOpenAI(
                    base_url=_base_url(self.config.url), api_key=self.config.api_key or _NO_KEY,
                    timeout=self.config.timeout, max_retries=self.config.retries, http_client=http,
                )
            self._async[left] = self._async[self.config.retries].with_options(max_retries=left)
        return self._async[left]

    def _sync_api(self, call: _Attempts) -> openai.OpenAI:
        import openai

        left = self.config.retries - call.sent
        if left not in self._sync:
            if self.config.retries not in self._sync:
                http = openai.DefaultHttpxClient(event_hooks={"request": [self._before_request_sync]})
                self._sync[self.config.retries] = openai.OpenAI(
                    base_url=_base_url(self.config.url), api_key=self.config.api_key or _NO_KEY,
                    timeout=self.config.timeout, max_retries=self.config.retries, http_client=http,
                )
            self._sync[left] = self._sync[self.config.retries].with_options(max_retries=left)
        return self._sync[left]

    def _before_request(self, request: _Request) -> float:
        """Every request, retries included: count it, and return how long to wait for the rate limit."""
        call = _CALL.get()
        if call is not None:
            call.sent += 1
        if not self.config.api_key:
            request.headers.pop("Authorization", None)
        return self.limiter.reserve()

    async def _before_request_async(self, request: _Request) -> None:
        await asyncio.sleep(self._before_request(request))

    def _before_request_sync(self, request: _Request) -> None:
        time.sleep(self._before_request(request))

    # --- retries and errors --------------------------------------------------------------------

    def _retrying(self, call: _Attempts) -> dict[str, Any]:
        """tenacity's policy for malformed replies: again while attempts are left, after a backoff."""

        def backoff(_: RetryCallState) -> float:
            return self.config.backoff * 2 ** (call.sent - 1) * (0.5 + random.random())

        return {
            "retry": retry_if_exception_type(_Malformed),
            "stop": lambda _: call.sent > self.config.retries,
            "wait": backoff,
            "reraise": True,
        }

    @contextmanager
    def _call(self, path: str) -> Iterator[_Attempts]:
        """One call: its requests counted, and whatever fails it turned into one LLMError."""
        import openai

        url = endpoint_url(self.config.url, path)
        call = _Attempts()
        token = _CALL.set(call)
        try:
            yield call
        except _Malformed as exc:
            raise self._fail(url, call.sent, exc.reason) from None
        except openai.APIStatusError as exc:
            code = exc.status_code
            if code not in _RETRIED_STATUS and code < 500:
                raise LLMError(
                    f"the model endpoint {exc.request.url} rejected the request with HTTP {code}: {_snippet(exc.response.text)}"
                ) from None
            raise self._fail(url, call.sent, f"HTTP {code} {_snippet(exc.response.text)}") from None
        except openai.APITimeoutError:
            reason = f"no reply within {self.config.timeout:g}s ({self.config.setting}_TIMEOUT)"
            raise self._fail(url, call.sent, reason) from None
        except openai.APIError as exc:  # a connection error: what the HTTP client said is the news
            cause = exc.__cause__ or exc
            raise self._fail(url, call.sent, f"{type(cause).__name__}: {cause}") from None
        finally:
            _CALL.reset(token)

    def _fail(self, url: str, attempts: int, reason: str) -> LLMError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        return LLMError(f"the model endpoint {url} ({self.config.setting}_URL) failed after {tries}: {reason}")


def _same(content: str) -> str:
    return content


def _parsed(text: str, parse: Callable[[Any], T]) -> T:
    """The reply parsed (which validates its shape too), or _Malformed to try again."""
    try:
        return parse(json.loads(text))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _Malformed(f"malformed reply ({type(exc).__name__}: {exc}): {_snippet(text)}") from None


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
