"""A node's stable id (kept in its data dir) and its incarnation (grows with every start)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Identity", "load_identity"]


@dataclass(frozen=True, slots=True)
class Identity:
    node_id: str
    incarnation: int


def load_identity(data_dir: Path, configured_id: str | None) -> Identity:
    """The configured id wins; otherwise one generated on first start and kept.

    The incarnation is at least the wall clock in milliseconds and always above the last one,
    so a restarted node outranks heartbeats of its previous life even if its data dir was wiped.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    id_file = data_dir / "node_id"
    if configured_id:
        node_id = configured_id
    elif id_file.exists():
        node_id = id_file.read_text().strip()
    else:
        node_id = f"n-{secrets.token_hex(4)}"
    id_file.write_text(node_id + "\n")
    inc_file = data_dir / "incarnation"
    last = int(inc_file.read_text()) if inc_file.exists() else 0
    incarnation = max(last + 1, time.time_ns() // 1_000_000)
    inc_file.write_text(f"{incarnation}\n")
    return Identity(node_id, incarnation)
