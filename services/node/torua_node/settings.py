from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from torua.embedders import EmbedderSettings
from torua.llm import LLMSettings
from torua.settings import BaseServiceSettings

__all__ = ["NodeSettings", "NODE_ID_PATTERN", "QueryLimits", "SnapshotPolicy"]

# Node ids become NATS subject tokens: no dots, spaces or wildcards.
NODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


# EmbedderSettings: TORUA_EMBEDDER (hash | openai | local) and TORUA_EMBEDDING_URL/_MODEL/_API_KEY/_TIMEOUT,
# the embedder for text the router embeds (chunks and entities written without vectors, questions).
# LLMSettings: TORUA_LLM_URL/_MODEL/_API_KEY/_TIMEOUT/_RETRIES/_RATE, the model behind torua.rag.answer.
# Inherited so that a wrong value stops the node at start with a message naming the variable.
class NodeSettings(BaseServiceSettings, EmbedderSettings, LLMSettings):
    node_id: str | None = Field(None, pattern=NODE_ID_PATTERN)
    data_dir: Path = Path("data/node")
    heartbeat_interval: float = Field(1.0, gt=0, le=60)
    node_max_shards: int | None = Field(64, ge=1)
    buffer_pool_mb: int = Field(256, ge=16, le=1 << 20)
    max_db_size_gb: int = Field(64, ge=1, le=1 << 16)
    # Seconds between comparisons of replicas' content digests (node/audit.py); 0 turns them off.
    digest_interval: float = Field(300.0, ge=0)
    # Write backpressure (router/backpressure.py): writes to a shard whose replicas have not applied
    # what this router published that many seconds ago get 503 with a retry hint (0: off).
    max_apply_lag: float = Field(10.0, ge=0, le=3600)
    # Guardrails of torua.graph.query (docs/queries.md, "Limits"). Seconds a query may run, on every
    # shard and in all; a request's `timeout_ms` may only lower it. Over it: cancelled, answered 408.
    query_timeout: float = Field(30.0, gt=0, le=3600)
    # Shard queries run in a worker process per shard replica, one at a time; this many more may
    # wait for it. A full queue answers 503 with `retry_after_ms`.
    query_queue: int = Field(16, ge=0, le=10_000)
    # Memory a shard query worker may take beyond what it holds when idle (MiB); over it: 413.
    query_memory_mb: int = Field(2048, ge=64, le=1 << 20)
    # The worker's own Kuzu buffer pool (MiB).
    query_buffer_pool_mb: int = Field(256, ge=16, le=1 << 20)
    # Largest value a query may build from constants: lpad/rpad/repeat length, range() elements.
    query_max_value: int = Field(100_000, ge=1)
    # Rows one shard may return for one query, and bytes of the whole merged answer; over: 413.
    query_max_rows: int = Field(1_000_000, ge=1)
    query_max_result_mb: int = Field(64, ge=1, le=1 << 16)
    # Concurrent torua.graph.query requests one node's router runs; more wait in a queue this long
    # (query_queue), then 503.
    query_concurrency: int = Field(32, ge=1, le=10_000)
    # Log retention (docs/operations.md, "Log retention"): a replica snapshots its shard into the
    # object store after this many applied entries of the shard (0: only on torua.cluster.snapshot),
    # and keeps this many snapshots per shard (older ones are deleted; the log is purged only below
    # the oldest one kept, so a damaged newest snapshot still has a fallback).
    snapshot_every: int = Field(10_000, ge=0)
    snapshot_keep: int = Field(2, ge=1, le=100)


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """The guardrails of torua.graph.query, from the node's settings (docs/queries.md, "Limits").
    The defaults are the settings' defaults, for tests and tools that build parts by hand."""

    timeout_s: float = 30.0
    queue: int = 16
    memory_mb: int = 2048
    buffer_pool_mb: int = 256
    max_value: int = 100_000
    max_rows: int = 1_000_000
    max_result_bytes: int = 64 * 1024 * 1024
    concurrency: int = 32
    max_db_size_gb: int = 64

    @classmethod
    def of(cls, s: NodeSettings) -> QueryLimits:
        return cls(
            timeout_s=s.query_timeout, queue=s.query_queue, memory_mb=s.query_memory_mb,
            buffer_pool_mb=s.query_buffer_pool_mb, max_value=s.query_max_value, max_rows=s.query_max_rows,
            max_result_bytes=s.query_max_result_mb * 1024 * 1024, concurrency=s.query_concurrency,
            max_db_size_gb=s.max_db_size_gb,
        )


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When replicas snapshot their shard and how many snapshots are kept (from the node's settings;
    the defaults are the settings' defaults)."""

    every: int = 10_000
    keep: int = 2

    @classmethod
    def of(cls, s: NodeSettings) -> SnapshotPolicy:
        return cls(every=s.snapshot_every, keep=s.snapshot_keep)
