"""The text of an entity (torua.text): what it is embedded by, and what BM25 indexes it by."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from torua.embedding import tokenize
from torua.text import entity_embedding_text, entity_text


def test_embedded_text_joins_name_and_description_or_falls_back() -> None:
    # Stored vectors were computed from exactly these strings: any change re-embeds differently.
    assert entity_embedding_text("e1", "Ada", "a mathematician") == "Ada. a mathematician"
    assert entity_embedding_text("e1", "Ada", "") == "Ada"
    assert entity_embedding_text("e1", "", "") == "e1"
    assert entity_embedding_text("e1", "", "desc") == ". desc"
    assert entity_embedding_text("e1", " Ada ", " d ") == "Ada .  d"


def test_indexed_text_joins_name_and_description() -> None:
    assert entity_text("Ada", "a mathematician") == "Ada a mathematician"
    assert entity_text("Ada", None) == "Ada"
    assert entity_text(None, None) == ""
    assert entity_text("", "d") == "d"


@given(st.text(max_size=20), st.text(max_size=40), st.text(min_size=1, max_size=10))
def test_both_texts_have_the_same_words_unless_the_entity_has_no_text(name: str, description: str, id_: str) -> None:
    embedded, indexed = entity_embedding_text(id_, name, description), entity_text(name, description)
    if name or description:
        assert tokenize(embedded) == tokenize(indexed)
    else:
        assert embedded == id_ and indexed == ""
