"""Writes through the log, reads with write tokens, deletes, idempotence, the key-value store."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torua import BadRequest, Client, NotFound, PayloadTooLarge
from torua.model import Chunk, Document, Entity, Relation
from torua.hashing import shard_for
from torua.subjects import WAL_STREAM
from torua.up import LocalCluster

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def api(shared_cluster: LocalCluster) -> AsyncIterator[Client]:
    client = await Client.connect(shared_cluster.url, request_timeout=10.0)
    await client.wait_for_state("green", timeout=30)
    yield client
    await client.close()


async def wal_last_seq(client: Client) -> int:
    info = await client.nc.jetstream().stream_info(WAL_STREAM)
    return info.state.last_seq


async def test_upsert_then_read_your_writes(api: Client) -> None:
    reply = await api.upsert(
        entities=[
            Entity(id="curie", name="Marie Curie", type="person", properties={"born": 1867}),
            Entity(id="radium", name="Radium", type="element"),
        ],
        relations=[Relation(source="curie", target="radium", type="DISCOVERED", weight=0.9)],
    )
    assert reply.written == {"documents": 0, "chunks": 0, "entities": 2, "relations": 1}
    got = await api.get("curie", after=reply.tokens)
    assert got.entity.name == "Marie Curie" and got.entity.properties == {"born": 1867}
    assert got.entity.embedding is None  # only when asked
    # Embedded by the node: the cluster's width (the default static model's 256).
    got = await api.get("curie", embedding=True)
    assert got.entity.embedding is not None and len(got.entity.embedding) == (await api.cluster_info()).embedding_dim == 256
    out = await api.neighbors(["curie"], direction="out", after=reply.tokens)
    assert [(e.source, e.type, e.target, e.weight) for e in out.edges] == [("curie", "DISCOVERED", "radium", 0.9)]
    assert {n.id for n in out.nodes} == {"curie", "radium"} and not out.partial
    inc = await api.neighbors(["radium"], direction="in", after=reply.tokens)
    assert [e.source for e in inc.edges] == ["curie"]
    assert (await api.neighbors(["radium"], direction="out", after=reply.tokens)).edges == []
    typed = await api.neighbors(["curie"], types=["OTHER"], after=reply.tokens)
    assert typed.edges == []


async def test_stubs_and_missing_entities_stay_invisible(api: Client) -> None:
    reply = await api.upsert(relations=[Relation(source="known-x", target="never-created-y")],
                             entities=[Entity(id="known-x", name="X")])
    out = await api.neighbors(["known-x"], after=reply.tokens)
    assert [n.id for n in out.nodes] == ["known-x"]
    assert [(e.source, e.target) for e in out.edges] == [("known-x", "never-created-y")]
    with pytest.raises(NotFound):
        await api.get("never-created-y", after=reply.tokens)


async def test_upsert_replaces_fields(api: Client) -> None:
    await api.upsert(entities=[Entity(id="up-1", name="old", description="first")])
    reply = await api.upsert(entities=[Entity(id="up-1", name="new")])
    got = await api.get("up-1", after=reply.tokens)
    assert (got.entity.name, got.entity.description) == ("new", "")


async def test_same_request_id_has_one_effect(api: Client) -> None:
    ents = [Entity(id=f"idem-{i}", name=f"E{i}") for i in range(5)]
    before = await wal_last_seq(api)
    first = await api.upsert(entities=ents, request_id="fixed-request-1")
    mid = await wal_last_seq(api)
    second = await api.upsert(entities=ents, request_id="fixed-request-1")
    assert second.tokens == first.tokens
    assert await wal_last_seq(api) == mid > before


async def test_delete_document_cascades_to_chunks_and_mentions(api: Client) -> None:
    reply = await api.upsert(
        documents=[Document(id="doc-del", title="Doomed")],
        entities=[Entity(id="ent-keep", name="Keeper")],
        chunks=[Chunk(id=f"doc-del#{i}", document_id="doc-del", text=f"chunk {i} about Keeper", entities=["ent-keep"])
                for i in range(3)],
    )
    assert (await api.get("ent-keep", after=reply.tokens)).entity.name == "Keeper"
    counts_before = await wait_for(lambda: _applied_everywhere(api, reply.tokens), timeout=10, what="upsert applied")
    deleted = await api.delete(documents=["doc-del"])
    tokens = {**reply.tokens, **deleted.tokens}
    assert (await api.get("ent-keep", after=tokens)).entity.name == "Keeper"  # entities stay
    after = await wait_for(lambda: _settled_counts(api, counts_before), timeout=10, what="delete applied")
    assert after["chunks"] == counts_before["chunks"] - 3
    # A mention is stored with its chunk and, as a copy, with its entity when that is another shard.
    smap = await api.cluster_shards()
    copies = len({shard_for("doc-del", smap.num_shards), shard_for("ent-keep", smap.num_shards)})
    assert after["mentions"] == counts_before["mentions"] - 3 * copies
    assert after["documents"] == counts_before["documents"] - 1


async def _applied_everywhere(api: Client, tokens: dict[str, int]) -> dict[str, int] | None:
    for node in (await api.cluster_nodes()).nodes:
        for r in (await api.node_info(node.id)).replicas:
            if r["applied_seq"] < tokens.get(str(r["shard"]), 0):
                return None
    return await shard_counts(api)


async def _settled_counts(api: Client, before: dict[str, int]) -> dict[str, int] | None:
    now = await shard_counts(api)
    return now if now["documents"] < before["documents"] else None


async def shard_counts(api: Client) -> dict[str, int]:
    """Counts summed over one replica of each shard."""
    smap = await api.cluster_shards()
    total: dict[str, int] = {}
    infos = {n.id: await api.node_info(n.id) for n in (await api.cluster_nodes()).nodes}
    for entry in smap.shards:
        replica = next(r for r in infos[entry.replicas[0]].replicas if r["shard"] == entry.id)
        for k, v in replica["counts"].items():
            total[k] = total.get(k, 0) + v
    return total


async def test_delete_entity_removes_its_edges(api: Client) -> None:
    reply = await api.upsert(
        entities=[Entity(id=f"del-{c}", name=c) for c in "abc"],
        relations=[Relation(source="del-a", target="del-b"), Relation(source="del-c", target="del-a")],
    )
    deleted = await api.delete(entities=["del-a"])
    tokens = {**reply.tokens, **deleted.tokens}
    with pytest.raises(NotFound):
        await api.get("del-a", after=tokens)
    for other in ("del-b", "del-c"):
        assert (await api.neighbors([other], after=tokens)).edges == []


KEYS = ["user@example.com", "path/to/resource", "key-with-spaces here", "数字", "ünïcödé.key", "a" * 1024]


async def test_kv_unicode_keys_and_megabyte_values(api: Client) -> None:
    big = base64.b64encode(os.urandom(786_000)).decode()  # 1,048,000 chars of base64
    assert len(big.encode()) <= 1024 * 1024
    for i, key in enumerate(KEYS):
        value = big if i == 0 else f"value for {key} ✓"
        put = await api.kv_put(key, value)
        assert await api.kv_get(key, after=put.token) == value
    gone = await api.kv_delete(KEYS[1])
    with pytest.raises(NotFound):
        await api.kv_get(KEYS[1], after=gone.token)
    with pytest.raises(PayloadTooLarge):
        await api.kv_put("too-big", "x" * (1024 * 1024 + 1))
    with pytest.raises(BadRequest):
        await api.kv_put("", "empty key")


# --- fuzzed bad input never reaches the log -------------------------------------------------------

_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)
_bad_upserts = st.one_of(
    st.builds(lambda v: {"entities": v}, st.one_of(_scalar, st.dictionaries(st.text(max_size=5), _json, max_size=2))),
    st.builds(lambda n: {"entities": [{"id": "x", "embedding": [0.1] * n}]}, st.integers(0, 63)),
    st.builds(lambda k, v: {"entities": [{"id": "x", k: v}]}, st.text(min_size=1, max_size=8).filter(
        lambda k: k not in {"id", "name", "type", "description", "properties", "embedding"}), _json),
    st.builds(lambda v: {"relations": [{"source": "a", "target": v}]}, st.one_of(st.just(""), st.integers(), st.none())),
    st.builds(lambda v: {"chunks": [{"id": "c", "text": "t", "document_id": v}]}, st.one_of(st.just(""), st.integers())),
    st.builds(lambda d: d, st.dictionaries(st.text(max_size=6), _json, min_size=1, max_size=3).filter(
        lambda d: not set(d) <= {"documents", "chunks", "entities", "relations", "request_id"})),
    st.just({}),
    st.binary(max_size=30).filter(lambda b: not b.strip().startswith(b"{")),
)


async def test_fuzzed_bad_writes_get_4xx_and_never_reach_the_log(api: Client) -> None:
    before = await wal_last_seq(api)
    seen: list[object] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_bad_upserts)
    def collect(payload: object) -> None:
        seen.append(payload)

    collect()
    for payload in seen:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        for subject in ("torua.graph.upsert", "torua.graph.delete", "torua.kv.put"):
            msg = await api.nc.request(subject, data, timeout=10)
            code = (msg.headers or {}).get("Nats-Service-Error-Code")
            assert code is not None and 400 <= int(code) < 500, (subject, payload, msg.data[:200])
            assert "Traceback" not in msg.data.decode("utf-8", "replace")
    assert await wal_last_seq(api) == before


async def test_poison_entry_is_skipped_identically_by_every_replica(api: Client) -> None:
    from torua.subjects import wal_subject

    smap = await api.cluster_shards()
    shard = shard_for("after-poison", smap.num_shards)
    ack = await api.nc.jetstream().publish(wal_subject(shard), b"\xc1 not msgpack", stream=WAL_STREAM)
    reply = await api.upsert(entities=[Entity(id="after-poison", name="still applied")])
    assert (await api.get("after-poison", after=reply.tokens)).entity.name == "still applied"
    holders = next(e for e in smap.shards if e.id == shard).replicas
    assert len(holders) == 2

    async def all_applied() -> list:
        digests = [await api.node_digest(n, shard) for n in holders]
        return digests if all(d.applied_seq >= reply.tokens[str(shard)] for d in digests) else []

    digests = await wait_for(all_applied, timeout=10, what="both replicas past the poison entry")
    assert len({d.digest for d in digests}) == 1
    for node in holders:
        info = await api.node_info(node)
        replica = next(r for r in info.replicas if r["shard"] == shard)
        assert replica["counts"]["failures"] >= 1
        assert replica["error"] and str(ack.seq) in replica["error"]


async def cache_counts(api: Client) -> tuple[int, int]:
    stats = json.loads((await api.nc.request("$SRV.STATS.torua-api", b"", timeout=5)).data)
    gauges = {g["kind"]: g["value"] for g in stats["endpoints"][0]["data"]["torua_result_cache"]}
    return int(gauges["hits"]), int(gauges["misses"])


async def test_result_cache_hits_and_never_serves_older_than_tokens(make_cluster) -> None:
    """The cache answers eventual reads (strong reads, the default, never come from it)."""
    cluster: LocalCluster = make_cluster(nodes=1, shards=4, replicas=1)  # one router, one cache
    cluster.start()
    async with await Client.connect(cluster.url) as api:
        await api.wait_for_state("green", timeout=30)
        first = await api.upsert(entities=[Entity(id="cache-1", name="Zyxwv quill")])
        a = await api.search_text("zyxwv", target="entities", after=first.tokens, consistency="eventual")
        hits, _ = await cache_counts(api)
        b = await api.search_text("zyxwv", target="entities", after=first.tokens, consistency="eventual")
        assert b == a and [h.id for h in a.hits] == ["cache-1"]
        assert (await cache_counts(api))[0] == hits + 1
        second = await api.upsert(entities=[Entity(id="cache-2", name="Zyxwv quill too")])
        fresh = await api.search_text("zyxwv", target="entities", after=second.tokens, consistency="eventual")
        assert {h.id for h in fresh.hits} == {"cache-1", "cache-2"}

        async def seen_without_tokens() -> bool:
            got = await api.search_text("zyxwv", target="entities", consistency="eventual")
            return {h.id for h in got.hits} == {"cache-1", "cache-2"}

        await wait_for(seen_without_tokens, timeout=10, what="cached result invalidated by the applied notice")
