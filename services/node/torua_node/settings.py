from __future__ import annotations

from pathlib import Path

from pydantic import Field

from torua.settings import BaseServiceSettings

__all__ = ["NodeSettings", "NODE_ID_PATTERN"]

# Node ids become NATS subject tokens: no dots, spaces or wildcards.
NODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class NodeSettings(BaseServiceSettings):
    node_id: str | None = Field(None, pattern=NODE_ID_PATTERN)
    data_dir: Path = Path("data/node")
    heartbeat_interval: float = Field(1.0, gt=0, le=60)
    node_max_shards: int | None = Field(64, ge=1)
    buffer_pool_mb: int = Field(64, ge=16, le=1 << 20)
    max_db_size_gb: int = Field(64, ge=1, le=1 << 16)
    # On SIGTERM, how long to keep serving while the coordinator moves this node's replicas away.
    drain_timeout: float = Field(10.0, ge=0)
