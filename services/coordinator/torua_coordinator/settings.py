from __future__ import annotations

import socket

from pydantic import Field

from torua.settings import BaseServiceSettings

__all__ = ["CoordinatorSettings"]


class CoordinatorSettings(BaseServiceSettings):
    coordinator_id: str = Field(default_factory=lambda: f"coord-{socket.gethostname()}", pattern=r"^[\w.-]+$")
    num_shards: int = Field(8, ge=1, le=4096)
    replication_factor: int = Field(2, ge=1, le=16)
    embedding_dim: int = Field(256, ge=1, le=8192)  # the default static embedder's width
    heartbeat_interval: float = Field(1.0, gt=0, le=60)
    node_timeout: float = Field(5.0, gt=0)
    reassign_delay: float = Field(10.0, ge=0)
    lease_ttl: float = Field(3.0, gt=0)
    # KV and WAL stream replicas: 3 on a NATS cluster of 3+ servers.
    nats_replicas: int = Field(1, ge=1, le=5)
    # Log retention (docs/operations.md, "Log retention"): seconds between the leader's passes that
    # purge each shard's log below its oldest kept snapshot and every replica's position, keeping
    # this many more sequences below that (a replica a little behind then catches up from the log).
    # 0: never purge (the log keeps every entry, as before retention).
    purge_interval: float = Field(30.0, ge=0)
    purge_margin: int = Field(1000, ge=0)
    # Byte limits (-1: none) of the log stream, the cluster KV bucket and the snapshot object store,
    # each reserved in JetStream's store, so a full log refuses writes (503 "maximum bytes
    # exceeded") while the KV the coordinators lead by keeps working (torua.streams).
    wal_max_bytes: int = Field(-1, ge=-1)
    kv_max_bytes: int = Field(64 * 1024 * 1024, ge=-1)
    snapshot_max_bytes: int = Field(-1, ge=-1)
