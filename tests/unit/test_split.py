"""Validation and shard splitting of writes (pure)."""

from __future__ import annotations

import gc

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torua.embedding import HashEmbedder
from torua.errors import BadRequest, PayloadTooLarge
from torua.hashing import shard_for
from torua.model import Chunk, DeleteRequest, Document, Entity, Relation, UpsertRequest

from torua_node.router.split import kv_shard, split_delete, split_kv, split_upsert
from torua_node.shard.wal import decode_entry, encode_entry

S = 8
EMB = HashEmbedder(16)


def split(req: UpsertRequest):
    return split_upsert(req, S, EMB, "req-1", 1.0)


ids = st.text(min_size=1, max_size=12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(ids, ids), min_size=1, max_size=20))
def test_relation_goes_to_source_and_target_shards(pairs: list[tuple[str, str]]) -> None:
    entries = split(UpsertRequest(relations=[Relation(source=a, target=b) for a, b in pairs]))
    for a, b in pairs:
        holders = {s for s, e in entries.items() for r in e.relations if (r.source, r.target) == (a, b)}
        assert holders == {shard_for(a, S), shard_for(b, S)}


def test_entities_chunks_documents_and_mentions_are_placed_by_rule() -> None:
    req = UpsertRequest(
        documents=[Document(id="doc")],
        entities=[Entity(id="e1", name="One"), Entity(id="e2", name="Two")],
        chunks=[Chunk(id="c1", document_id="doc", text="One met Two", entities=["e1", "e2", "e1"])],
    )
    entries = split(req)
    home = shard_for("doc", S)
    assert [d.id for d in entries[home].documents] == ["doc"]
    assert [c.id for c in entries[home].chunks] == ["c1"]
    for e in ("e1", "e2"):
        assert [x.id for x in entries[shard_for(e, S)].entities if x.id == e] == [e]
        holders = {s for s, en in entries.items() for m in en.mentions if m.entity_id == e}
        assert holders == {home, shard_for(e, S)}
    # The duplicate mention of e1 is written once per holder.
    assert sum(m.entity_id == "e1" for m in entries[home].mentions) == 1


def test_missing_embeddings_are_computed_deterministically_and_given_ones_kept() -> None:
    given_vec = [0.5] * 16
    req = UpsertRequest(entities=[Entity(id="a", name="Ada Lovelace"), Entity(id="b", embedding=given_vec)])
    first, second = split(req), split(req)
    ent = {e.id: e for en in first.values() for e in en.entities}
    assert np.allclose(np.frombuffer(ent["a"].embedding, "<f4"), EMB.embed(["Ada Lovelace"])[0])
    assert np.frombuffer(ent["b"].embedding, "<f4").tolist() == given_vec
    assert first == second


@pytest.mark.parametrize(
    "req,field",
    [
        (UpsertRequest(), "nothing to write"),
        (UpsertRequest(entities=[Entity(id="a", embedding=[1.0] * 3)]), "entities[0].embedding"),
        (UpsertRequest(chunks=[Chunk(id="c", document_id="d", text="t", embedding=[float("nan")] * 16)]), "chunks[0].embedding"),
        # Finite as a float64 but not as the float32 that is stored.
        (UpsertRequest(entities=[Entity(id="a", embedding=[0.5] * 16), Entity(id="b", embedding=[1e39] + [0.0] * 15)]),
         "entities[1].embedding"),
        (UpsertRequest(relations=[Relation(source="a", target="b", weight=float("inf"))]), "relations[0].weight"),
        (UpsertRequest(entities=[Entity(id="a", properties={"x": {"y": float("nan")}})]), "entities[0].properties.x.y"),
    ],
)
def test_invalid_writes_name_the_field(req: UpsertRequest, field: str) -> None:
    with pytest.raises(BadRequest) as info:
        split(req)
    assert field in info.value.description


def test_delete_goes_to_every_shard() -> None:
    entries = split_delete(DeleteRequest(documents=["d", "d"], entities=["e"]), S, "r", 1.0)
    assert sorted(entries) == list(range(S))
    assert all(e.delete_documents == ["d"] and e.delete_entities == ["e"] for e in entries.values())
    with pytest.raises(BadRequest):
        split_delete(DeleteRequest(), S, "r", 1.0)


def test_kv_value_limit_is_413() -> None:
    ok = split_kv("数字", "x" * (1024 * 1024), S, "r", 1.0)
    assert list(ok) == [kv_shard("数字", S)]
    with pytest.raises(PayloadTooLarge):
        split_kv("k", "é" * (512 * 1024 + 1), S, "r", 1.0)  # 2 bytes each in UTF-8


def test_bulk_rows_are_not_tracked_by_the_garbage_collector() -> None:
    # A batch holds hundreds of thousands of rows at once: tracked, they made every collection walk
    # them, which measured as a quarter of a node's ingest time.
    req = msgspec.json.decode(msgspec.json.encode(UpsertRequest(
        entities=[Entity(id="e", embedding=[0.0] * 16)],
        relations=[Relation(source="a", target="b", chunks=["c"])],
    )), type=UpsertRequest)
    assert not any(gc.is_tracked(x) for x in (req, req.entities[0], req.relations[0]))
    entries = [decode_entry(encode_entry(e)) for e in split(req).values()]
    rows = [row for e in entries for row in (*e.entities, *e.relations)]
    assert len(rows) >= 2 and not any(gc.is_tracked(row) for row in rows)
