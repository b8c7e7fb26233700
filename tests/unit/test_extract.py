"""The heuristic extractor: deterministic, names to stable ids, relations with their chunk as provenance."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torua.extract import (
    CO_OCCURRENCE_WEIGHT,
    VERB_WEIGHT,
    HeuristicExtractor,
    NullExtractor,
    _parse_graph,
    _to_extraction,
    entity_id,
    entity_type,
    relation_type,
    sentences,
)
from torua.lexicon import is_common, singular
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


# --- documentation: terms, stop-entities, resolution, relation weights ----------------------------


def names_of(text: str) -> dict[str, str]:
    return {e.name: e.type for e in extract(text).entities}


def test_code_spans_that_name_things_are_code_terms() -> None:
    md = (
        "Add `TrustedHostMiddleware` to the app and set `docs_url` to change where the docs live.\n\n"
        "Run Prometheus with `--web.enable-admin-api` and a `scrape_interval` of `15s`; the `up` metric"
        " (see `up{job=\"node\"}` and `rate()`) is 1 for every target in a `<scrape_config>`.\n"
    )
    found = names_of(md)
    for term in ("TrustedHostMiddleware", "docs_url", "--web.enable-admin-api", "scrape_interval", "up", "rate",
                 "scrape_config"):
        assert found.get(term) == "code", term
    assert "15s" not in found and "Prometheus" in found
    assert entity_id("`docs_url`") == entity_id("docs_url") == "ent:docs_url"


def test_code_spans_that_are_values_commands_or_expressions_are_not() -> None:
    md = (
        "Install it with `pip install \"fastapi[standard]\"`, write `x = 1` or `async def`, return `None`,"
        " `True` or `200`, and call `q`.\n\n```python\nclass HiddenModel(BaseModel):\n    pass\n```\n"
    )
    assert extract(md).entities == []


def test_generic_documentation_words_are_never_entities() -> None:
    text = (
        "The Description says the Default is NULL, the Type is String and True or False are Optional. "
        "A Note or a Tip is not a name. The server replies with NATS OK."
    )
    assert list(names_of(text)) == ["NATS"]


def test_table_headers_and_separators_yield_no_entities() -> None:
    md = (
        "| Name | Description | Default |\n"
        "|------|-------------|---------|\n"
        "| `scrape_interval` | How often Prometheus scrapes | `1m` |\n"
        "| `scrape_timeout` | When a scrape of Consul times out | `10s` |\n"
    )
    ex = extract(md)
    assert {e.name: e.type for e in ex.entities} == {
        "scrape_interval": "code", "Prometheus": "entity", "scrape_timeout": "code", "Consul": "entity"}
    assert sentences(md) == ["scrape_interval", "How often Prometheus scrapes", "1m", "scrape_timeout",
                             "When a scrape of Consul times out", "10s"]
    rels = {(r.source, r.target) for r in ex.relations}
    assert rels == {("ent:scrape_interval", "ent:prometheus"), ("ent:scrape_timeout", "ent:consul")}


def test_table_rows_link_their_first_name_to_the_others_only() -> None:
    md = "| a | b | c |\n|---|---|---|\n| `alpha_one` | Berlin | Chennai and Delft |\n"
    rels = {(r.source, r.target) for r in extract(md).relations}
    assert ("ent:alpha_one", "ent:berlin") in rels and ("ent:alpha_one", "ent:chennai") in rels
    assert ("ent:alpha_one", "ent:delft") in rels
    assert ("ent:berlin", "ent:chennai") not in rels  # cells are not one sentence
    assert ("ent:chennai", "ent:delft") in rels  # but a cell is


def test_sentence_initial_common_words_are_not_names_but_names_are() -> None:
    text = (
        "Add the middleware. Set the value first. Starting the server prints a line. Enabled by default. "
        "Listening on port 80. Build the image. Summary of changes. Info messages follow. Go ahead. "
        "Kubernetes schedules the pods. Uvicorn serves them. Install Docker on the host. "
        "Using FastAPI is simple. Quell is quiet. Ships sail to Quell."
    )
    assert set(names_of(text)) == {"Kubernetes", "Uvicorn", "Docker", "FastAPI", "Quell"}


def test_log_lines_html_admonitions_and_front_matter_are_not_text() -> None:
    md = (
        "---\ntitle: Getting Started\nsort_rank: 1\n---\n\n"
        "/// note | Technical Details\n\nStarlette does the work.\n\n///\n\n"
        '<span style="color:#D3D7CF"> INFO </span> Waiting for application startup.\n\n'
        "See [the Grafana docs](https://grafana.com/Docs/Page) for more.\n"
    )
    assert set(names_of(md)) == {"Starlette", "Grafana"}


def test_a_chunk_that_starts_inside_a_code_block() -> None:
    chunk = "    app = FastAPI()\n    return Response(Item)\n```\n\nThen Uvicorn serves the app.\n"
    assert set(names_of(chunk)) == {"Uvicorn"}
    # a fence with an info string always opens a block, so the parity is clear
    chunk = "Zeta Corp wrote this.\n```\nLeaked Name\n```\nAnd Kappa Labs.\n```python\nHidden Class\n"
    assert set(names_of(chunk)) == {"Zeta Corp", "Kappa Labs"}
    # a chunk in the middle of a long block has no fence at all
    assert extract("x = Foo(1)\ny = Bar(x)\nreturn Baz(y) {}\n").entities == []


def test_plural_case_and_punctuation_variants_share_one_id() -> None:
    assert entity_id("Leaf Nodes") == entity_id("leaf node") == entity_id("LEAF NODE") == "ent:leaf-node"
    assert entity_id("(Leaf Node).") == entity_id("“Leaf Nodes”") == "ent:leaf-node"
    assert entity_id("Metrics") == entity_id("metric") and entity_id("Libraries") == entity_id("library")
    assert entity_id("Native Histograms") == entity_id("native histogram")
    assert entity_id("processes") == "ent:process" and entity_id("Branches") == "ent:branch"
    assert entity_id("Servers'") == entity_id("server") and entity_id("Guild's") == entity_id("guild")
    # not plurals of a common noun: names ending in -s, -ss, -us, -is, and the head before "of"
    for name in ("Williams", "Dallas", "Kubernetes", "Status", "Class", "Analysis", "Grey Shoals", "Codex of Tides"):
        assert entity_id(name) == "ent:" + name.lower().replace(" ", "-"), name
    assert entity_id("Williams") != entity_id("William")
    ex = extract("A Leaf Node forwards messages. Two Leaf Nodes connect to the hub. The APIs and the API agree.")
    assert sorted(e.id for e in ex.entities) == ["ent:api", "ent:leaf-node"]


def test_related_to_is_weak_and_typed_relations_are_full_weight() -> None:
    ex = extract(TEXT)
    assert {r.weight for r in ex.relations if r.type == "RELATED_TO"} == {CO_OCCURRENCE_WEIGHT}
    assert {r.weight for r in ex.relations if r.type != "RELATED_TO"} == {VERB_WEIGHT}
    assert CO_OCCURRENCE_WEIGHT < VERB_WEIGHT < 1.0
    # co-occurrence is not repeated where a verb already links the pair
    pairs = [(r.source, r.target) for r in ex.relations if r.type == "RELATED_TO"]
    assert ("ent:lantern-guild", "ent:mira-okonkwo") not in pairs


def test_co_occurrence_reaches_only_nearby_names() -> None:
    ex = extract("Avalon, Brigadoon, Camelot, Dunmore, Elsinore and Faerie are far apart.")
    pairs = {(r.source, r.target) for r in ex.relations}
    assert ("ent:avalon", "ent:brigadoon") in pairs and ("ent:avalon", "ent:dunmore") in pairs
    assert ("ent:avalon", "ent:elsinore") not in pairs and len(pairs) <= 3 * 6


@pytest.mark.parametrize(
    ("between", "expected"),
    [
        (" is the capital of ", "CAPITAL_OF"),
        (" commands ", "COMMANDS"),
        (" inherits from ", "INHERITS_FROM"),
        (" with our ", "RELATED_TO"),
        (" to main ", "RELATED_TO"),
        (" instead of ", "RELATED_TO"),
    ],
)
def test_relation_types_need_a_verb(between: str, expected: str) -> None:
    assert relation_type(between) == expected


def test_lexicon() -> None:
    for word in ("Add", "Set", "Encouraged", "Starting", "Listening", "Enabled", "Go", "Head", "Build", "ENCOURAGED",
                 "precomputed", "Staleness", "well-known"):
        assert is_common(word), word
    for word in ("Kubernetes", "FastAPI", "WebSocket", "Tessaly", "Okonkwo", "NATS"):
        assert not is_common(word), word
    assert [singular(w) for w in ("nodes", "libraries", "processes", "caches", "status", "series", "ids")] == [
        "node", "library", "process", "cache", "status", "series", "id"]


def test_links_keep_their_text_and_lose_their_target() -> None:
    md = "Graph [`rate(x[5m])`](http://localhost:9090/graph?g0.expr=rate(x)&tab=1) in [Grafana](https://Grafana.com/Docs).\n"
    assert sentences(md) == ["Graph rate(x[5m]) in Grafana."]
    assert names_of(md) == {"rate": "code", "Grafana": "entity"}
