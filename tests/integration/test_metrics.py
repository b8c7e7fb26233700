"""Prometheus text on the metrics port, changing with load, and the same figures in $SRV.STATS."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from torua import Client
from torua.model import Entity
from torua.up import LocalCluster

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):  # raises on invalid exposition text
        for s in family.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            samples[key] = s.value
    return samples


async def test_metrics_endpoint_reflects_load(make_cluster) -> None:
    node_port, coord_port = free_port(), free_port()
    cluster: LocalCluster = make_cluster(nodes=0, shards=4, replicas=1)
    cluster.start_nats()
    cluster.start_coordinator(TORUA_METRICS_PORT=str(coord_port))
    cluster.start_node("node-1", TORUA_METRICS_PORT=str(node_port))
    async with await Client.connect(cluster.url) as client:
        await client.wait_for_state("green", timeout=30)
        before = await wait_for(lambda: _scrape_async(node_port), timeout=10, what="node metrics")
        key = "torua_requests_total{endpoint=upsert,service=torua-api}"
        for i in range(5):
            await client.upsert(entities=[Entity(id=f"m{i}", name="metric")])
        after = scrape(node_port)
        assert after.get(key, 0) >= before.get(key, 0) + 5
        assert after["torua_replicas{node=node-1}"] == 4
        assert any(k.startswith("torua_wal_lag{") for k in after)
        assert after["process_resident_memory_bytes{}"] > 0
        coord = scrape(coord_port)
        assert coord["torua_nodes{status=healthy}"] == 1
        assert coord["torua_shard_replicas{state=active}"] == 4
        stats = json.loads((await client.nc.request("$SRV.STATS.torua-api", b"", timeout=5)).data)
        upsert = next(e for e in stats["endpoints"] if e["name"] == "upsert")
        assert upsert["data"]["requests"] >= 5
        assert upsert["data"]["process_memory_bytes"] > 0
        assert upsert["data"]["torua_replicas"] == [{"node": "node-1", "value": 4}]


async def _scrape_async(port: int) -> dict[str, float]:
    return scrape(port)


async def test_json_logs_carry_node_and_shard(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(nodes=0, shards=2, replicas=1)
    cluster.start_nats()
    cluster.start_coordinator()
    cluster.start_node("node-1", TORUA_LOG_JSON="true", TORUA_LOG_LEVEL="DEBUG")
    async with await Client.connect(cluster.url) as client:
        await client.wait_for_state("green", timeout=30)
        reply = await client.upsert(entities=[Entity(id="logged", name="x")], request_id="req-logged")
        await client.get("logged", after=reply.tokens)
    lines = (cluster.logs / "node-1.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert entries and len(entries) >= 0.9 * len(lines)  # everything but stray library output is JSON
    assert all(e["node_id"] == "node-1" and e["role"] == "node" for e in entries)
    assert any("shard" in e for e in entries)
    assert any(e.get("request_id") == "req-logged" for e in entries)
