"""bench/cypher.py (`make bench-cypher`) still runs end to end: a tiny cluster, every row printed, and
every answer equal to embedded Kuzu's."""

from __future__ import annotations

import pytest
from bench import cypher

pytestmark = pytest.mark.timeout(180)


def test_the_cypher_benchmark_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    cypher.main(["--entities", "200", "--relations", "600", "--nodes", "1", "--shards", "2", "--requests", "3",
                 "--runs", "1"])
    out = capsys.readouterr().out
    for name in ("2-hop count, whole graph", "3-hop count, whole graph", "2-hop count from one id",
                 "3-hop count from one id", "2-hop rows from one id", "WITH + OPTIONAL MATCH from one id",
                 "shortest path"):
        assert name in out, f"missing {name!r} in:\n{out}"
    assert out.count("(equal)") == 7 and "DIFFERENT" not in out, out
