"""Typed `nats.micro` endpoints: decode the request, run the handler, encode the reply or the error.

Every error reply carries the `Nats-Service-Error-Code` / `Nats-Service-Error` headers and the body
`{"error": {"code", "description"}}`. Unexpected exceptions are logged with their traceback and reach
the caller only as a 500 naming the exception type, never as a repr or a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.micro.request import Request as MicroRequest
from nats.micro.service import EndpointConfig, EndpointStats, Service

from torua.errors import BadRequest, ToruaError
from torua.metrics import metrics as prometheus
from torua.wire import ErrorBody, ErrorDetail

__all__ = [
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "Endpoint",
    "EndpointMetrics",
    "RawReply",
    "add_endpoints",
    "decode_request",
    "encode",
    "error_of",
    "error_reply",
]

log = logging.getLogger(__name__)

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
_MAX_CONCURRENT = 256
_BUSY_RETRY_MS = 100

T = TypeVar("T")
_encoder = msgspec.json.Encoder()
Handler = Callable[[Any], Awaitable[Any]]


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_request(data: bytes, request_type: type[T]) -> T:
    """Decode a JSON request; an empty body means `{}`. Errors name the offending field."""
    if not data.strip():
        data = b"{}"
    try:
        return msgspec.json.decode(data, type=request_type)
    except msgspec.ValidationError as exc:
        # msgspec names the field; its wording of the non-blank pattern (model.Query) is spelled out.
        text = str(exc).replace("Expected `str` matching regex '\\\\S'", "Expected a string that is not blank")
        raise BadRequest(f"invalid request: {text}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request nests arrays or objects too deeply") from None


def error_of(headers: dict[str, str] | None, data: bytes) -> ErrorDetail | None:
    """The service error a reply carries (None for a success): the one decoder of error replies,
    for the client, the router and the coordinator alike. A body that is not Torua's error shape
    (another service, a truncated reply) still gives the code, with the header's description."""
    code = (headers or {}).get(ERROR_CODE_HEADER)
    if code is None:
        return None
    try:
        return msgspec.json.decode(data, type=ErrorBody).error
    except (msgspec.ValidationError, msgspec.DecodeError):
        fallback = (headers or {}).get(ERROR_HEADER) or data.decode("utf-8", "replace")[:500]
        try:
            number = int(code)
        except ValueError:
            number = 500
        return ErrorDetail(code=number, description=fallback)


def error_reply(code: int, description: str, retry_after_ms: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = encode(ErrorBody(error=ErrorDetail(code=code, description=description, retry_after_ms=retry_after_ms)))
    # Header values must be one line.
    headers = {ERROR_CODE_HEADER: str(code), ERROR_HEADER: " ".join(description.split())}
    return body, headers


@dataclass(frozen=True, slots=True)
class RawReply:
    """What a handler returns to send bytes already encoded, with headers (a page of a reply too large
    for one message: `torua_node.shard.api`)."""

    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class EndpointMetrics:
    """Counters kept beside micro's own, since concurrent handlers finish after micro stops timing."""

    requests: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0

    def observe(self, seconds: float, code: int | None) -> None:
        self.requests += 1
        self.latency_sum_s += seconds
        self.latency_max_s = max(self.latency_max_s, seconds)
        if code is not None:
            self.errors[code] += 1

    def as_dict(self) -> dict[str, Any]:
        avg = self.latency_sum_s / self.requests if self.requests else 0.0
        return {
            "requests": self.requests,
            "errors_by_code": {str(c): n for c, n in sorted(self.errors.items())},
            "latency_avg_ms": round(avg * 1000, 3),
            "latency_max_ms": round(self.latency_max_s * 1000, 3),
        }


@dataclass(slots=True)
class Endpoint:
    name: str
    subject: str
    handler: Handler
    request_type: type
    description: str
    queue_group: str | None = None
    # Run each request in its own task: nats-py runs one subscription's callbacks one at a time.
    concurrent: bool = False


class _Runner:
    def __init__(self, service: str) -> None:
        self.service = service
        self.metrics: dict[str, EndpointMetrics] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(_MAX_CONCURRENT)

    def wrap(self, ep: Endpoint) -> Callable[[MicroRequest], Awaitable[None]]:
        metrics = self.metrics.setdefault(ep.name, EndpointMetrics())

        async def serve(request: MicroRequest) -> None:
            started = time.perf_counter()
            code: int | None = None
            try:
                req: Any = decode_request(request.data, ep.request_type)
                reply = await ep.handler(req)
                if isinstance(reply, RawReply):
                    await request.respond(reply.data, headers=reply.headers or None)
                else:
                    await request.respond(encode(reply))
            except ToruaError as exc:
                code = exc.code
                await _respond_error(request, exc.code, exc.description, getattr(exc, "retry_after_ms", None))
            except Exception as exc:
                code = 500
                log.exception("endpoint %s failed", ep.subject)
                await _respond_error(request, 500, f"internal error ({type(exc).__name__}); see the server log")
            finally:
                elapsed = time.perf_counter() - started
                metrics.observe(elapsed, code)
                prometheus.observe(self.service, ep.name, elapsed, code)

        if not ep.concurrent:
            return serve

        async def spawn(request: MicroRequest) -> None:
            if self.slots.locked():
                # Every slot busy: answer 503 at once rather than stall this subscription (and, behind
                # it, NATS's pending queue) until one frees up.
                metrics.observe(0.0, 503)
                prometheus.observe(self.service, ep.name, 0.0, 503)
                await _respond_error(request, 503, f"{self.service} on this process is busy with {_MAX_CONCURRENT} "
                                     f"requests; retry after {_BUSY_RETRY_MS} ms", _BUSY_RETRY_MS)
                return
            await self.slots.acquire()
            task = asyncio.create_task(serve(request))
            self.tasks.add(task)
            task.add_done_callback(self._done)

        return spawn

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    def stats_data(self, stats: EndpointStats) -> dict[str, Any]:
        m = self.metrics.get(stats.name)
        return {**(m.as_dict() if m else {}), **prometheus.gauges()}


async def _respond_error(request: MicroRequest, code: int, description: str, retry_after_ms: int | None = None) -> None:
    body, headers = error_reply(code, description, retry_after_ms)
    try:
        await request.respond(body, headers=headers)
    except Exception:
        log.debug("could not send error reply", exc_info=True)


class ServiceHandle:
    """A started micro service with its endpoints' metrics and in-flight request tasks."""

    def __init__(self, service: Service, runner: _Runner) -> None:
        self.service = service
        self._runner = runner

    @property
    def metrics(self) -> dict[str, EndpointMetrics]:
        return self._runner.metrics

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, answer those already received, and let in-flight ones finish (up to
        `grace` seconds in all)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace

        def left() -> float:
            return max(deadline - loop.time(), 0.1)

        await self._drain_endpoints(grace)
        try:  # bounded: with NATS unreachable, each flush inside would wait its own 10 s
            await asyncio.wait_for(self.service.stop(), left())
        except Exception:
            log.debug("service stop failed", exc_info=True)
        if self._runner.tasks:
            await asyncio.wait(list(self._runner.tasks), timeout=left())

    async def _drain_endpoints(self, timeout: float) -> None:
        """Drain each endpoint's subscription: the server stops sending, and what it sent already is
        handled. nats.micro's own stop unsubscribes, which drops requests already on their way to us
        (a queue group's other members would have answered them; their callers wait out a timeout).
        micro keeps the endpoints' subscriptions private (nats-py 2.16): once drained, its stop must
        not touch them again, so they leave its list."""
        endpoints = list(getattr(self.service, "_endpoints", []))
        subs = [sub for ep in endpoints if (sub := getattr(ep, "_subscription", None)) is not None]
        if not subs or len(subs) != len(endpoints):
            return  # not the layout this was written for: micro's stop does it (without draining)
        draining = asyncio.gather(*(sub.drain() for sub in subs), return_exceptions=True)
        try:
            await asyncio.wait_for(draining, timeout)
        except TimeoutError:
            log.warning("%s: endpoints still draining after %.0fs", self._runner.service, timeout)
        self.service._endpoints = []


async def add_endpoints(
    nc: Any,
    *,
    name: str,
    version: str,
    description: str,
    endpoints: list[Endpoint],
    metadata: dict[str, str] | None = None,
) -> ServiceHandle:
    from nats.micro import add_service

    runner = _Runner(name)
    service = await add_service(
        nc,
        name=name,
        version=version,
        description=description,
        metadata=metadata,
        stats_handler=runner.stats_data,
    )
    for ep in endpoints:
        await service.add_endpoint(
            EndpointConfig(
                name=ep.name,
                subject=ep.subject,
                handler=runner.wrap(ep),
                queue_group=ep.queue_group,
                metadata={"description": ep.description},
            )
        )
    return ServiceHandle(service, runner)
