"""Readable output for the command line: tables, the cluster's status, retrieved context, answers."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Sequence

from torua.model import AnswerReply, RetrieveReply
from torua.wire import ClusterInfo, NodesReply, ShardMap

__all__ = ["table", "status_text", "retrieve_text", "answer_text"]

WIDTH = 100


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ago(ts: float | None) -> str:
    return "-" if ts is None else f"{max(time.time() - ts, 0):.1f}s ago"


def status_text(info: ClusterInfo, nodes: NodesReply, shards: ShardMap) -> str:
    sc = info.shards
    head = (
        f"cluster {info.cluster_id}  state {info.state.upper()}  nodes {info.nodes.healthy}/{info.nodes.total} healthy"
        f"  shards {sc.total} x R{sc.replication_factor}: {sc.active} active, {sc.initializing} initializing,"
        f" {sc.unassigned} unassigned  map r{info.map_revision}"
    )
    node_rows = [
        (n.id, n.status + (", draining" if n.draining and n.status != "draining" else ""), len(n.shards), n.capacity, ",".join(map(str, n.shards)), _ago(n.last_heartbeat), n.version)
        for n in nodes.nodes
    ]
    shard_rows = [
        (s.id, s.state, ",".join(s.replicas), ",".join(s.active), ",".join(s.leaving)) for s in shards.shards
    ]
    if info.problems:
        head += "\n" + "\n".join(f"  problem: {p}" for p in info.problems)
    return "\n\n".join(
        [
            head,
            table(["NODE", "STATUS", "REPLICAS", "CAPACITY", "SHARDS", "HEARTBEAT", "VERSION"], node_rows),
            table(["SHARD", "STATE", "REPLICAS", "ACTIVE", "LEAVING"], shard_rows),
        ]
    )


def _short(text: str, limit: int = 300) -> str:
    text = re.sub(r"^#+[ \t]*(.+)$", r"\1 —", text, flags=re.MULTILINE)  # a markdown heading, inline
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(" ".join(text.split()), WIDTH, initial_indent=indent, subsequent_indent=indent)


def retrieve_text(reply: RetrieveReply, question: str) -> str:
    names = {e.id: e.name or e.id for e in reply.entities}
    lines = [f"Question: {question}", "", f"Top passages ({len(reply.chunks)}):"]
    for i, c in enumerate(reply.chunks, 1):
        lines.append(f"{i:>3}. [{c.id}]  score {c.score:.3f}")
        lines.append(_wrap(_short(c.text), "     "))
    if reply.entities:
        by_hop = ", ".join(f"{e.name or e.id} ({e.hop})" for e in reply.entities[:15])
        lines += ["", _wrap(f"Entities on the paths (hops from the question): {by_hop}")]
    if reply.relations:
        lines += ["", "Relations on the paths:"]
        for r in reply.relations[:10]:
            src = ", ".join(r.chunks[:2])
            lines.append(f"  {names.get(r.source, r.source)} -{r.type}-> {names.get(r.target, r.target)}"
                         + (f"  [{src}]" if src else ""))
    lines.append(f"\n{reply.tokens_used} context tokens")
    return "\n".join(lines)


def answer_text(reply: AnswerReply) -> str:
    texts = {c.id: c.text for c in reply.chunks}
    lines = [textwrap.fill(reply.answer, WIDTH, replace_whitespace=False) if len(reply.answer) < 2000 else reply.answer]
    if reply.citations:
        lines += ["", "Citations:"]
        lines += [f"  [{cid}] {_short(texts.get(cid, ''), 80)}" for cid in reply.citations]
    return "\n".join(lines)
