"""The heuristic extractor: deterministic, names to stable ids, relations with their chunk as provenance."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torua.extract import (
    HeuristicExtractor,
    NullExtractor,
    _parse_graph,
    _to_extraction,
    entity_id,
    entity_type,
    relation_type,
    sentences,
)
from torua.model import Entity, Relation

TEXT = """# The Lantern Guild

The Lantern Guild was founded by Mira Okonkwo in 803. When Captain Ilse Marrow sailed the Glass Comet
to Quell, the lamps of the guild guided her. Dr. Orrin Vale taught at the Ardent Academy in Port Ardent.

- Founded in 803, the guild keeps the lighthouses of the Calder Reach.
- The University of Kalo and the Order of the Silver Lantern signed the Treaty of Brine.
"""


def extract(text: str, chunk: str = "doc:x#0"):
    return HeuristicExtractor().extract_sync(chunk, text)


def test_entities_and_typed_relations() -> None:
    ex = extract(TEXT)
    names = {e.name: e.type for e in ex.entities}
    assert names == {
        "Lantern Guild": "organization", "Mira Okonkwo": "entity", "Ilse Marrow": "person", "Glass Comet": "entity",
        "Quell": "entity", "Orrin Vale": "person", "Ardent Academy": "organization", "Port Ardent": "city",
        "Calder Reach": "place", "University of Kalo": "organization",
        "Order of the Silver Lantern": "organization", "Treaty of Brine": "work",
    }
    rels = {(r.source, r.type, r.target) for r in ex.relations}
    assert ("ent:lantern-guild", "FOUNDED_BY", "ent:mira-okonkwo") in rels
    assert ("ent:ilse-marrow", "SAILED", "ent:glass-comet") in rels
    assert ("ent:orrin-vale", "TAUGHT_AT", "ent:ardent-academy") in rels
    assert ("ent:order-of-the-silver-lantern", "SIGNED", "ent:treaty-of-brine") in rels
    assert ("ent:ardent-academy", "RELATED_TO", "ent:port-ardent") in rels  # co-occurrence only
    assert all(r.chunks == ["doc:x#0"] for r in ex.relations)
    assert set(ex.mentions) == {e.id for e in ex.entities}
    ids = {e.id for e in ex.entities}
    assert all(r.source in ids and r.target in ids for r in ex.relations)


def test_deterministic_and_provenance_only_differs_by_chunk() -> None:
    a, b, c = extract(TEXT), extract(TEXT), extract(TEXT, "doc:y#3")
    assert msgspec.to_builtins(a.entities) == msgspec.to_builtins(b.entities)
    assert msgspec.to_builtins(a.relations) == msgspec.to_builtins(b.relations)
    assert [(r.source, r.type, r.target) for r in a.relations] == [(r.source, r.type, r.target) for r in c.relations]
    assert all(r.chunks == ["doc:y#3"] for r in c.relations)


def test_async_interface_matches() -> None:
    ex = asyncio.run(HeuristicExtractor().extract("c", TEXT))
    assert msgspec.to_builtins(ex.entities) == msgspec.to_builtins(extract(TEXT, "c").entities)
    assert asyncio.run(NullExtractor().extract("c", TEXT)).entities == []


def test_entity_ids_come_from_normalised_names() -> None:
    assert entity_id("Mira Okonkwo") == entity_id("mira   okonkwo") == entity_id("The Mira Okonkwo's") == "ent:mira-okonkwo"
    assert entity_id("Café  Noir") == "ent:café-noir"
    long = entity_id("Word " * 60)
    assert long.startswith("ent:word-word") and len(long) < 100 and long == entity_id("word " * 60)
    assert entity_id("!!!") != entity_id("???")


def test_sentence_start_words_need_support() -> None:
    ex = extract("Sailors come from afar. Founded long ago, it stands. Tessaly is old. They love Tessaly.")
    assert [e.name for e in ex.entities] == ["Tessaly"]


def test_sentences_skip_markdown_structure() -> None:
    md = "# Heading Words Here\n\nFirst line\ncontinues here. Dr. Vale came.\n\n```\nCode Block\n```\n- Item One\n"
    assert sentences(md) == ["First line continues here.", "Dr. Vale came.", "Item One"]


@pytest.mark.parametrize(
    ("between", "expected"),
    [
        (" was founded by ", "FOUNDED_BY"),
        (" founded the ", "FOUNDED"),
        (" is headquartered in ", "HEADQUARTERED_IN"),
        (" in ", "RELATED_TO"),
        (" and ", "RELATED_TO"),
        (", ", "RELATED_TO"),
        (" (then) ", "RELATED_TO"),
        (" sailed far away with many people to ", "RELATED_TO"),
        (", where ", "RELATED_TO"),
    ],
)
def test_relation_types(between: str, expected: str) -> None:
    assert relation_type(between) == expected


def test_entity_type_from_name_alone() -> None:
    assert entity_type("Port Ardent") == "city"
    assert entity_type("Duskwater River") == "place"
    assert entity_type("Mira Okonkwo") == "entity"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_never_fails_and_stays_valid(text: str) -> None:
    ex = extract(text)
    ids = {e.id for e in ex.entities}
    assert len(ids) == len(ex.entities)
    for e in ex.entities:
        msgspec.json.decode(msgspec.json.encode(e), type=Entity)  # within the wire limits
    for r in ex.relations:
        assert r.source in ids and r.target in ids and r.source != r.target
        msgspec.json.decode(msgspec.json.encode(r), type=Relation)
    assert msgspec.to_builtins(extract(text).relations) == msgspec.to_builtins(ex.relations)


def test_llm_output_parsing() -> None:
    graph = _parse_graph('```json\n{"entities": [{"name": "Ada", "type": "Person"}], "relations": []}\n```')
    ex = _to_extraction(graph, "c1")
    assert [(e.id, e.type) for e in ex.entities] == [("ent:ada", "person")]
    for bad in ["", "not json", '{"entities": 3}', '{"entities": [{"type": "x"}]}']:
        with pytest.raises(ValueError):
            _parse_graph(bad)
