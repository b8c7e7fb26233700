"""Topics from a document's structure: headings, the section path a chunk is under, and ingest
making them `topic` entities that the section's chunks mention."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torua.chunking import TokenChunker
from torua.extract import NullExtractor, entity_id
from torua.ingest import IngestOptions, _title, ingest_texts
from torua.structure import TOPIC_TYPE, Heading, Sections, headings

DOC = """---
title: Jobs and instances
sort_rank: 3
---

Intro text.

# Middleware { #middleware }

Some words.

## `TrustedHostMiddleware`

Enforces a Host header.

```python
# not a heading: inside a fence
app = FastAPI()
```

### Options

Arguments.

## [GZip](https://example.com/gzip) Middleware

Compression.
"""


def test_headings_are_read_cleaned_and_code_is_skipped() -> None:
    found = headings(DOC)
    assert [(h.level, h.text) for h in found] == [
        (0, "Jobs and instances"),
        (1, "Middleware"),
        (2, "TrustedHostMiddleware"),
        (3, "Options"),
        (2, "GZip Middleware"),
    ]
    for h in found[1:]:
        assert DOC[h.offset :].lstrip().startswith("#")


def test_a_chunk_is_under_its_section_path_and_the_sections_it_opens() -> None:
    topics_of = Sections(headings(DOC)).topics
    at = DOC.index("Arguments.")
    assert topics_of(at, at + 5) == ["Jobs and instances", "Middleware", "TrustedHostMiddleware", "Options"]
    # A sibling section replaces the previous one at its level and below.
    at = DOC.index("Compression.")
    assert topics_of(at, at + 5) == ["Jobs and instances", "Middleware", "GZip Middleware"]
    # A chunk spanning a boundary is under both sections.
    start, end = DOC.index("Enforces"), DOC.index("Arguments.")
    assert topics_of(start, end) == ["Jobs and instances", "Middleware", "TrustedHostMiddleware", "Options"]


def _topics_walked(found: list[Heading], start: int, end: int) -> list[str]:
    """The definition, walked heading by heading: what `Sections.topics` must equal."""
    path: list[Heading] = []
    for h in found:
        if h.offset > start:
            break
        while path and path[-1].level >= h.level:
            path.pop()
        path.append(h)
    names: list[str] = []
    for h in path + [h for h in found if start < h.offset < end]:
        if h.text not in names:
            names.append(h.text)
    return names


_headings = st.lists(st.tuples(st.integers(0, 30), st.integers(1, 6), st.sampled_from("abcde")), max_size=25).map(
    lambda rows: [Heading(offset, level, text) for offset, level, text in sorted(rows)]
)


@given(_headings, st.integers(0, 40), st.integers(0, 20))
def test_sections_topics_equal_the_walked_definition(found: list[Heading], start: int, length: int) -> None:
    assert Sections(found).topics(start, start + length) == _topics_walked(found, start, start + length)


def test_plain_text_has_no_topics() -> None:
    assert headings("Just a paragraph.\n\nAnother one, with a # inside.") == []


class _Recorder:
    """Just enough of the client for ingest: records what is upserted."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.entities: list[Any] = []

    async def cluster_info(self) -> Any:
        return SimpleNamespace(embedding_dim=0)

    async def latest_tokens(self) -> dict[str, int]:
        return {}

    async def kv_get(self, key: str, after: Any = None) -> Any:
        from torua.errors import NotFound

        raise NotFound(key)

    async def kv_put(self, key: str, value: str) -> Any:
        return SimpleNamespace(token={})

    async def neighbors(self, ids: Any, **kw: Any) -> Any:
        return SimpleNamespace(edges=[])

    async def upsert(self, documents: Any = (), chunks: Any = (), entities: Any = (), relations: Any = ()) -> Any:
        self.chunks += list(chunks)
        self.entities += list(entities)
        return SimpleNamespace(tokens={})


async def test_ingest_makes_headings_topics_mentioned_by_their_sections() -> None:
    text = "# Retention\n\n" + "Samples are kept on disk. " * 60 + "\n\n## Compaction\n\n" + "Blocks merge. " * 80
    client = _Recorder()
    await ingest_texts(client, {"storage": text}, extractor=NullExtractor(), chunker=TokenChunker(max_tokens=128, overlap=0))  # type: ignore[arg-type]
    topics = {e.id: e for e in client.entities if e.type == TOPIC_TYPE}
    assert set(topics) == {entity_id("Retention"), entity_id("Compaction")}
    first, last = client.chunks[0], client.chunks[-1]
    assert first.entities == [entity_id("Retention")]
    assert set(last.entities) == {entity_id("Retention"), entity_id("Compaction")}
    # Off by option: chunks only.
    client = _Recorder()
    await ingest_texts(client, {"storage": text}, IngestOptions(topics=False), extractor=NullExtractor())  # type: ignore[arg-type]
    assert client.entities == [] and all(c.entities == [] for c in client.chunks)


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("---\ntitle: 'Query Functions'\nweight: 3\n---\n\n# Other\nbody", "Query Functions"),
        ("---\nweight: 3\n---\n\nFirst line here\n", "First line here"),
        ("# Top\ntext", "Top"),
        ("\n\nplain first\n# H", "plain first"),
        ("---\n\n***\nAfter the rules", "After the rules"),
        ("", "fallback"),
    ],
)
def test_a_documents_title_skips_front_matter_and_rules(text: str, title: str) -> None:
    assert _title(text, "fallback") == title
