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
