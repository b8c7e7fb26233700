"""Shard queries in a worker process: a query can be stopped at its deadline and held to a memory
limit without touching the replica.

Why a process, measured with kuzu 0.11.3 (docs/queries.md, "How the limits are enforced"):

- Kuzu's own timeout (`set_query_timeout`, `interrupt`) is checked between batches of rows, so a
  query whose rows are evaluated in one batch runs on (e.g. `range(0, 10**8)` in a RETURN ran past
  6 s with a 3 s timeout, reaching 5.8 GB before `std::bad_alloc`). Only killing stops it.
- Values built by functions such as `range` are allocated outside the buffer pool, so
  `buffer_pool_size` does not bound a query's memory; an address-space limit (RLIMIT_AS) does, and
  only a process of its own can have one.
- A second process cannot open a database another process has open read-write, not even read-only
  ("IO exception: Could not set lock on file"); a forked child of the process that has it open hangs
  on its first statement (Kuzu's scheduler threads do not survive fork).

So each replica's worker opens a *copy* of the replica's database read-only: the database file and
its WAL, copied on the replica's own thread between two applies (when both are consistent: Kuzu
checkpoints only inside a commit on that thread), at a known `applied_seq`. Copying a 21 MB shard
took 7 ms and opening the copy 9 ms (WAL replay included). The copy is refreshed when a query needs
a newer position than it holds, so strong reads keep their meaning. The worker runs one query at a
time with Kuzu's timeout set; if it has not answered shortly after the deadline it is killed
(SIGKILL) and started again on the next query. Over its memory limit an allocation fails and the
query is answered 413; the worker stays up.

The replica's side is `ShardQueries`: admission to a bounded queue (503 with `retry_after_ms` when
full), the copy, the worker's life. The worker's side is `main`, run as
`python -m torua_node.shard.worker`, speaking length-prefixed msgpack frames on stdin/stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import struct
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from torua.errors import (
    BadRequest,
    InternalError,
    Overloaded,
    QueryTimeout,
    ResourceLimit,
    ToruaError,
    Unavailable,
)
from torua_node.cypher.merge import ShardRows

if TYPE_CHECKING:
    from torua_node.settings import QueryLimits

__all__ = ["ShardQueries", "Snapshot", "copy_database", "main", "KILL_GRACE_S", "IDLE_EXIT_S"]

log = logging.getLogger(__name__)

# How long after its deadline a query's worker may still answer (Kuzu's own timeout stopping it
# cleanly) before it is killed.
KILL_GRACE_S = 0.3
# A worker unused this long exits (its memory back to the node); the next query starts another.
IDLE_EXIT_S = 120.0
_START_TIMEOUT_S = 30.0
_HEADER = struct.Struct(">I")
_MIB = 1024 * 1024

# Snapshot(dest) copies the replica's database into the directory `dest` and gives the applied_seq
# of the copy.
Snapshot = Callable[[Path], Awaitable[int]]


# --- frames between a replica and its worker -------------------------------------------------------


class OpenDb(msgspec.Struct, tag="open", kw_only=True):
    path: str
    buffer_pool_mb: int
    max_db_size_gb: int
    memory_mb: int


class RunQuery(msgspec.Struct, tag="query", kw_only=True):
    query: str
    params: dict[str, Any]
    timeout_ms: int
    max_rows: int
    max_value: int
    max_bytes: int


class Opened(msgspec.Struct, tag="opened", kw_only=True):
    pass


class Rows(msgspec.Struct, tag="rows", kw_only=True):
    result: ShardRows


class Failed(msgspec.Struct, tag="failed", kw_only=True):
    code: int
    description: str
    timeout_s: float | None = None
    limit: int | None = None
    setting: str | None = None


ToWorker = OpenDb | RunQuery
FromWorker = Opened | Rows | Failed


def _error(f: Failed) -> ToruaError:
    if f.code == 408:
        return QueryTimeout(f.description, timeout_s=f.timeout_s)
    if f.code == 413:
        return ResourceLimit(f.description, limit=f.limit, setting=f.setting)
    if f.code == 400:
        return BadRequest(f.description)
    if f.code == 503:
        return Unavailable(f.description)
    return InternalError(f.description)


def _failed(exc: BaseException) -> Failed:
    if isinstance(exc, ToruaError):
        return Failed(code=exc.code, description=exc.description, timeout_s=getattr(exc, "timeout_s", None),
                      limit=getattr(exc, "limit", None), setting=getattr(exc, "setting", None))
    if isinstance(exc, MemoryError):
        return Failed(code=413, description="the query ran out of memory (TORUA_QUERY_MEMORY_MB)",
                      setting="TORUA_QUERY_MEMORY_MB")
    return Failed(code=500, description=f"query worker error ({type(exc).__name__}: {exc})"[:1000])


# --- the replica's side ---------------------------------------------------------------------------


def copy_database(src: Path, dest: Path) -> None:
    """Copy a Kuzu database (its file and WAL) into the directory `dest` as `dest/<src.name>`. Call
    it where no transaction is writing (the replica's own thread, between two calls)."""
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".wal"):
        path = src.with_name(src.name + suffix)
        if path.is_file():
            shutil.copyfile(path, dest / path.name)


# The worker's entry: `torua`'s package __init__ (the client, settings, pydantic) is not needed there,
# so the package is entered without running it; what the worker imports is then kuzu, msgspec,
# pyarrow (storage.tables) and Torua's query code. It starts well ahead of need (`_Spares`) anyway.
_BOOTSTRAP = """
import importlib.util, sys, types
spec = importlib.util.find_spec("torua")
pkg = types.ModuleType("torua")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["torua"] = pkg
from torua_node.shard.worker import main
main()
"""


class _Worker:
    """One worker process and its frame channel."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.copy_seq = -1
        self.copy_dir: Path | None = None

    @classmethod
    async def start(cls) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _BOOTSTRAP, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def ask(self, msg: ToWorker) -> FromWorker:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        body = msgspec.msgpack.encode(msg)
        self.proc.stdin.write(_HEADER.pack(len(body)) + body)
        await self.proc.stdin.drain()
        header = await self.proc.stdout.readexactly(_HEADER.size)
        data = await self.proc.stdout.readexactly(_HEADER.unpack(header)[0])
        return msgspec.msgpack.decode(data, type=FromWorker)

    async def kill(self) -> int | None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 5.0)
        return self.proc.returncode


class _Spares:
    """Warm worker processes (started, their imports done or under way, no database open) shared by
    a node's replicas: a shard takes one when it needs a worker (its first query, or after a kill)
    and another is started in the background, so no query waits for Python and Kuzu to start."""

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self.users = 0
        self._ready: list[_Worker] = []
        self._filling: asyncio.Task[None] | None = None

    async def take(self) -> _Worker:
        while self._ready:
            worker = self._ready.pop()
            if worker.alive:
                self.fill()
                return worker
        worker = await _Worker.start()
        self.fill()
        return worker

    def fill(self) -> None:
        if self.users > 0 and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill(), name="query-spares")

    async def _fill(self) -> None:
        while self.users > 0 and len(self._ready) < self.size:
            try:
                self._ready.append(await _Worker.start())
            except Exception:
                log.warning("could not start a spare query worker", exc_info=True)
                return

    async def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
        ready, self._ready = self._ready, []
        for worker in ready:
            await worker.kill()


_spares: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Spares] = weakref.WeakKeyDictionary()


def _spares_of_loop() -> _Spares:
    loop = asyncio.get_running_loop()
    spares = _spares.get(loop)
    if spares is None:
        spares = _spares[loop] = _Spares()
    return spares


class ShardQueries:
    """The queries of one shard replica: a bounded queue in front of one worker process that holds a
    read-only copy of the replica's database (see the module's docstring)."""

    def __init__(self, shard: int, db_path: Path, snapshot: Snapshot, limits: QueryLimits) -> None:
        self.shard = shard
        self.limits = limits
        self._snapshot = snapshot
        self._root = db_path.parent / "query"
        self._lock = asyncio.Lock()
        self._waiting = 0  # admitted and not finished: the one running included
        self._worker: _Worker | None = None
        self._copies = 0
        self._avg_s = 0.05  # moving average of query times, for the retry hint
        self._last_used = time.monotonic()
        self._idle_task: asyncio.Task[None] | None = None
        self._closed = False
        self.kills = 0  # workers killed at a deadline
        self.restarts = 0
        self._spares: _Spares | None = None
        shutil.rmtree(self._root, ignore_errors=True)  # copies a crash left behind

    def start(self) -> None:
        """Warm a spare worker for the node (call from the event loop, when the replica opens)."""
        if self._spares is None:
            self._spares = _spares_of_loop()
            self._spares.users += 1
            self._spares.fill()

    @property
    def busy(self) -> int:
        return self._waiting

    def admit(self) -> None:
        """Take a place in the queue or raise Overloaded (503) at once."""
        if self._closed:
            raise Unavailable(f"shard {self.shard} replica is closing; retry")
        if self._waiting >= self.limits.queue + 1:
            retry_ms = max(50, int(self._avg_s * self._waiting * 1000))
            raise Overloaded(
                f"shard {self.shard} has {self._waiting} queries running or queued (limit {self.limits.queue + 1}, "
                f"TORUA_QUERY_QUEUE={self.limits.queue}); retry after {retry_ms} ms",
                retry_after_ms=retry_ms,
            )
        self._waiting += 1

    def release(self) -> None:
        self._waiting -= 1

    async def run(self, query: str, params: dict[str, Any], min_seq: int, timeout_s: float, started: float) -> ShardRows:
        """Run an admitted query on a copy at `min_seq` or later, within `timeout_s` of `started`
        (time.monotonic()): QueryTimeout past it, the worker killed if it does not stop by itself."""
        deadline = started + timeout_s
        try:
            await asyncio.wait_for(self._lock.acquire(), max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            raise self._timeout(timeout_s, "waiting for the shard's earlier queries") from None
        try:
            began = time.monotonic()
            rows = await self._run_locked(query, params, min_seq, timeout_s, deadline)
            self._avg_s = 0.8 * self._avg_s + 0.2 * (time.monotonic() - began)
            return rows
        finally:
            self._last_used = time.monotonic()
            self._lock.release()

    def _timeout(self, timeout_s: float, where: str = "") -> QueryTimeout:
        at = f" ({where})" if where else ""
        return QueryTimeout(
            f"the query ran past its time limit of {timeout_s:g}s on shard {self.shard}{at} and was cancelled "
            "(TORUA_QUERY_TIMEOUT, or the request's timeout_ms)", timeout_s=timeout_s)

    async def _run_locked(self, query: str, params: dict[str, Any], min_seq: int, timeout_s: float,
                          deadline: float) -> ShardRows:
        worker = await self._ready_worker(min_seq, timeout_s, deadline)
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._timeout(timeout_s, "before it started")
        ask = RunQuery(query=query, params=params, timeout_ms=max(int(left * 1000), 1), max_rows=self.limits.max_rows,
                       max_value=self.limits.max_value, max_bytes=self.limits.max_result_bytes)
        try:
            reply = await asyncio.wait_for(worker.ask(ask), left + KILL_GRACE_S)
        except TimeoutError:
            self.kills += 1
            await self._drop(worker)
            if self._spares is not None:
                self._spares.fill()
            log.warning("shard %d: query worker killed at the %gs deadline", self.shard, timeout_s,
                        extra={"shard": self.shard})
            raise self._timeout(timeout_s) from None
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
            code = await self._drop(worker)
            if self._closed:
                raise Unavailable(f"shard {self.shard} replica closed while the query ran; retry") from None
            log.warning("shard %d: query worker died running a query (exit %s)", self.shard, code,
                        extra={"shard": self.shard})
            raise ResourceLimit(
                f"the query worker of shard {self.shard} died running the query (exit {code}): most likely it "
                f"needed more than TORUA_QUERY_MEMORY_MB={self.limits.memory_mb} MiB; it was restarted",
                limit=self.limits.memory_mb, setting="TORUA_QUERY_MEMORY_MB") from None
        if isinstance(reply, Failed):
            raise _error(reply)
        if not isinstance(reply, Rows):
            raise InternalError(f"query worker answered {type(reply).__name__} to a query")
        return reply.result

    async def _ready_worker(self, min_seq: int, timeout_s: float, deadline: float) -> _Worker:
        """The worker, started if needed, on a copy at `min_seq` or later."""
        worker = self._worker
        if worker is not None and not worker.alive:
            await self._drop(worker)
            worker = None
        if worker is None:
            self.start()
            assert self._spares is not None
            worker = await self._spares.take()
            self._worker = worker
            self.restarts += 1
            self._ensure_idle_task()
        if worker.copy_seq < min_seq:
            self._copies += 1
            dest = self._root / str(self._copies)
            try:
                seq = await self._snapshot(dest)
            except Exception as exc:  # noqa: BLE001 - the replica's database closed or reopening: retryable
                shutil.rmtree(dest, ignore_errors=True)
                raise Unavailable(f"shard {self.shard}: could not copy the database for the query worker "
                                  f"({type(exc).__name__}: {exc}); retry") from None
            try:
                reply = await asyncio.wait_for(worker.ask(OpenDb(
                    path=str(dest / "graph.kuzu"), buffer_pool_mb=self.limits.buffer_pool_mb,
                    max_db_size_gb=self.limits.max_db_size_gb, memory_mb=self.limits.memory_mb,
                )), max(_START_TIMEOUT_S, deadline - time.monotonic()))
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
                await self._drop(worker)
                shutil.rmtree(dest, ignore_errors=True)
                raise Unavailable(f"shard {self.shard}: the query worker did not open its copy "
                                  f"({type(exc).__name__}); retry") from None
            if isinstance(reply, Failed):
                await self._drop(worker)
                shutil.rmtree(dest, ignore_errors=True)
                raise Unavailable(f"shard {self.shard}: the query worker could not open its copy: {reply.description}")
            old, worker.copy_dir, worker.copy_seq = worker.copy_dir, dest, seq
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return worker

    async def _drop(self, worker: _Worker) -> int | None:
        code = await worker.kill()
        if worker.copy_dir is not None:
            shutil.rmtree(worker.copy_dir, ignore_errors=True)
        if self._worker is worker:
            self._worker = None
        return code

    def _ensure_idle_task(self) -> None:
        if self._idle_task is None or self._idle_task.done():
            self._idle_task = asyncio.create_task(self._exit_when_idle(), name=f"query-idle-{self.shard}")

    async def _exit_when_idle(self) -> None:
        while self._worker is not None:
            await asyncio.sleep(min(IDLE_EXIT_S, 10.0))
            if self._worker is not None and not self._lock.locked() and time.monotonic() - self._last_used > IDLE_EXIT_S:
                async with self._lock:
                    if self._worker is not None:
                        await self._drop(self._worker)

    async def close(self) -> None:
        self._closed = True
        if self._idle_task is not None:
            self._idle_task.cancel()
        if self._worker is not None:
            await self._drop(self._worker)
        shutil.rmtree(self._root, ignore_errors=True)
        spares, self._spares = self._spares, None
        if spares is not None:
            spares.users -= 1
            if spares.users == 0:
                await spares.close()


# --- the worker's side ----------------------------------------------------------------------------


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


class _Serve:
    def __init__(self) -> None:
        self.db: Any = None
        self.conn: Any = None
        self.memory = 0

    def open(self, msg: OpenDb) -> FromWorker:
        import kuzu

        self.close()
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))  # the new database maps its own region
        self.db = kuzu.Database(msg.path, read_only=True, buffer_pool_size=msg.buffer_pool_mb * _MIB,
                                max_db_size=msg.max_db_size_gb << 30, max_num_threads=1)
        self.conn = kuzu.Connection(self.db)
        self.memory = msg.memory_mb * _MIB
        limit = _vm_bytes() + self.memory
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return Opened()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.db is not None:
            self.db.close()
        self.conn = self.db = None

    def query(self, msg: RunQuery) -> FromWorker:
        from torua_node.shard.query import execute_on_shard

        if self.conn is None:
            return Failed(code=503, description="query worker has no database open")
        timeout_s = msg.timeout_ms / 1000
        self.conn.set_query_timeout(msg.timeout_ms)
        rows = execute_on_shard(self.conn, msg.query, msg.params, max_rows=msg.max_rows, max_value=msg.max_value,
                                timeout_s=timeout_s)
        reply = Rows(result=rows)
        return reply


def main() -> None:
    """The worker: read a frame, answer a frame, until stdin closes. Its stdout is the channel, so
    anything else written there goes to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    serve = _Serve()
    while True:
        header = inp.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        msg = msgspec.msgpack.decode(inp.read(_HEADER.unpack(header)[0]), type=ToWorker)
        try:
            reply = serve.open(msg) if isinstance(msg, OpenDb) else serve.query(msg)
            body = msgspec.msgpack.encode(reply)
            if isinstance(msg, RunQuery) and len(body) > msg.max_bytes:
                body = msgspec.msgpack.encode(Failed(
                    code=413, limit=msg.max_bytes // _MIB, setting="TORUA_QUERY_MAX_RESULT_MB",
                    description=f"the query's rows on one shard take {len(body)} bytes; the limit is "
                                f"{msg.max_bytes // _MIB} MiB (TORUA_QUERY_MAX_RESULT_MB): add LIMIT or return fewer columns"))
        except BaseException as exc:  # every failure is the answer to this request
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            body = msgspec.msgpack.encode(_failed(exc))
        out.write(_HEADER.pack(len(body)) + body)
        out.flush()


if __name__ == "__main__":
    main()
