from __future__ import annotations

from pathlib import Path

from pydantic import Field

from torua.embedders import EmbedderSettings
from torua.llm import LLMSettings
from torua.settings import BaseServiceSettings

__all__ = ["NodeSettings", "NODE_ID_PATTERN"]

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
