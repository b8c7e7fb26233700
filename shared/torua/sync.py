"""`SyncClient`: the asyncio `Client` for code that is not async (scripts, notebooks, web apps).

The async client runs on a private event loop in a daemon thread; each method submits the same
coroutine there and waits for its result, so behaviour (timeouts, retries, typed replies, mapped
exceptions) is exactly the async client's. Every public async method of `Client` is here under the
same name and signature, generated below so the two can never drift apart.

    with SyncClient.connect("nats://127.0.0.1:4222") as c:
        print(c.cluster_info().state)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from torua import eventloop
from torua.client import Client
from torua.connect import NatsAuth
from torua.settings import DEFAULT_NATS_URL

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """Blocking twin of `torua.Client`; use `SyncClient.connect(...)`, ideally in a `with` block."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.aclient = client  # the underlying async client (its loop is not yours: use the methods)
        self._loop = loop
        self._thread = thread

    @classmethod
    def connect(
        cls,
        url: str = DEFAULT_NATS_URL,
        *,
        timeout: float = 5.0,
        request_timeout: float = 10.0,
        retries: int = 3,
        auth: NatsAuth | None = None,
        direct_reads: bool = True,
    ) -> SyncClient:
        loop = eventloop.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="torua-sync-client", daemon=True)
        thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(
                Client.connect(url, timeout=timeout, request_timeout=request_timeout, retries=retries, auth=auth,
                               direct_reads=direct_reads),
                loop,
            )
            client = future.result()
        except BaseException:
            _stop(loop, thread)
            raise
        return cls(client, loop, thread)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("this SyncClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._run(self.aclient.close())
            finally:
                _stop(self._loop, self._thread)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    if not thread.is_alive():
        loop.close()


def _blocking(name: str, method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: SyncClient, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self.aclient, name)(*args, **kwargs))

    return call


_OWN = {"connect", "close"}
for _name, _method in inspect.getmembers(Client, inspect.iscoroutinefunction):
    if not _name.startswith("_") and _name not in _OWN:
        setattr(SyncClient, _name, _blocking(_name, _method))
