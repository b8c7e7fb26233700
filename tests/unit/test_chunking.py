"""The chunker: every word covered, chunks within the token limit, bounded overlap, always progress."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torua.chunking import TokenChunker, approx_tokens

texts = st.lists(
    st.tuples(st.text(alphabet="abcdefghij.,!?ÄéΩ-", min_size=1, max_size=40), st.sampled_from([" ", "  ", "\n", "\n\n", ". "])),
    max_size=200,
).map(lambda parts: "".join(w + sep for w, sep in parts))


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(texts, st.text(max_size=2000)), max_tokens=st.integers(1, 120), overlap_frac=st.floats(0, 0.9))
def test_chunk_properties(text: str, max_tokens: int, overlap_frac: float) -> None:
    overlap = min(int(max_tokens * overlap_frac), max_tokens - 1)
    chunks = TokenChunker(max_tokens, overlap).split(text)
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    if not spans:
        assert chunks == []
        return
    for c in chunks:
        assert c.text == text[c.start : c.end]  # offsets are exact
        assert approx_tokens(c.text) <= max_tokens  # the token limit holds
        assert c.text == c.text.strip()
    # Coverage: every character of every word is inside some chunk.
    for start, end in spans:
        for pos in range(start, end):
            assert any(c.start <= pos < c.end for c in chunks), (pos, text[start:end])
    assert chunks[0].start == spans[0][0] and chunks[-1].end == spans[-1][1]
    for prev, nxt in zip(chunks, chunks[1:]):
        assert prev.start < nxt.start and prev.end < nxt.end  # progress
        if nxt.start < prev.end:  # the shared part fits the overlap
            assert approx_tokens(text[nxt.start : prev.end]) <= overlap
        else:
            assert text[prev.end : nxt.start].strip() == ""  # no gap, only whitespace


def test_overlap_repeats_the_last_words() -> None:
    text = " ".join(f"w{i:03d}" for i in range(200))  # 4 chars + space per word
    chunks = TokenChunker(max_tokens=20, overlap=5).split(text)
    assert len(chunks) > 5
    for prev, nxt in zip(chunks, chunks[1:]):
        shared = text[nxt.start : prev.end]
        assert shared and prev.text.endswith(shared) and nxt.text.startswith(shared)
        assert approx_tokens(shared) <= 5


def test_no_overlap_partitions_the_words() -> None:
    text = " ".join(f"word{i}" for i in range(500))
    chunks = TokenChunker(max_tokens=16, overlap=0).split(text)
    assert " ".join(c.text for c in chunks) == text


def test_prefers_sentence_ends() -> None:
    text = "The first sentence is here. " * 3 + "A second kind of sentence follows it without a stop and goes on"
    chunks = TokenChunker(max_tokens=30, overlap=0).split(text)
    assert chunks[0].text.endswith(".")


def test_long_words_are_cut() -> None:
    text = "x" * 1000
    chunks = TokenChunker(max_tokens=10, overlap=2).split(text)
    assert "".join(c.text for c in chunks) == text  # 40-character pieces, no overlap possible
    assert all(approx_tokens(c.text) <= 10 for c in chunks)


def test_deterministic_and_empty() -> None:
    c = TokenChunker(64, 8)
    text = "Mira Okonkwo founded the Lantern Guild. " * 40
    assert c.split(text) == c.split(text)
    assert c.split("") == [] and c.split("   \n\t ") == []


@pytest.mark.parametrize(("max_tokens", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_invalid_settings(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        TokenChunker(max_tokens, overlap)


def test_same_count_as_the_retriever() -> None:
    from torua_node.rag.retrieve import approx_tokens as retriever_tokens

    for text in ["", "a", "abcd", "abcde", "x" * 1001]:
        assert approx_tokens(text) == retriever_tokens(text)
