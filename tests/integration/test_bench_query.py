"""bench/query.py (`make bench-query`) still runs end to end: a tiny cluster, every table row printed,
and the answers checked against the references."""

from __future__ import annotations

import pytest
from bench import query

pytestmark = pytest.mark.timeout(120)


def test_the_query_benchmark_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    query.main(["--entities", "200", "--relations", "600", "--chunks", "40", "--nodes", "1", "--shards", "2",
                "--requests", "5", "--clients", "2"])
    out = capsys.readouterr().out
    for row in ("| `graph.get` by id |", "| `neighbors` 1 hop |", "| `neighbors` 2 hops |", "| `neighbors` 3 hops |",
                "| `search.vector` top-10 |", "| `rag.retrieve` k=5 |", "| bare nats-py request-reply",
                "throughput, 2 concurrent clients, graph.get:", "load through torua.graph.upsert:"):
        assert row in out, f"missing {row!r} in:\n{out}"
    assert "graph.get returns the entity: 5/5" in out
    for k in ("1 hop", "2 hops", "3 hops"):
        assert f"neighbors {k}: the cluster's (Kuzu's) answers equal NetworkX's: 5/5 (5/5)" in out
    assert "recall@10 vs exact NumPy: 1.000" in out
