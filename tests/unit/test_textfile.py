"""What ingest accepts as text (torua.textfile): decoded by content, binary refused."""

from __future__ import annotations

import codecs
import gzip
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torua.errors import BadRequest
from torua.textfile import WESTERN, decode_text

WESTERN_TEXT = "Le café est très chaud. Ça va, garçon? Über naïve façade, Zürich.\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_unicode_with_or_without_a_mark(encoding: str) -> None:
    text = "naïve résumé — 日本語 ✓\n" * 3
    assert decode_text(text.encode(encoding)) == text


@pytest.mark.parametrize("text", [WESTERN_TEXT * 10, "café", "Müller straße grüße\n"])
def test_latin1_is_read_as_western_not_replaced(text: str) -> None:
    assert decode_text(text.encode("latin-1")) == text


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Привет, как дела? Это русский текст о базах данных и графах.\n" * 5, "cp1251"),
        ("Καλημέρα κόσμε, αυτό είναι ελληνικό κείμενο.\n" * 5, "cp1253"),
        ("Zażółć gęślą jaźń, to jest polski tekst.\n" * 5, "cp1250"),
        ("これは日本語の文章です。東京へ行きます。\n" * 5, "shift_jis"),
    ],
)
def test_other_legacy_encodings_are_detected(text: str, encoding: str) -> None:
    assert decode_text(text.encode(encoding)) == text


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (random.Random(1).randbytes(300_000), "binary content"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + random.Random(2).randbytes(4000), "binary content"),
        (gzip.compress(b"hello world " * 1000), "binary content"),
        (bytes(b for b in random.Random(3).randbytes(300_000) if b), "not text"),
        (b"\x01\x02\x03\x04 a few letters \x05\x06\x07\x08\x0e\x0f" * 50, "control characters"),
        (codecs.BOM_UTF8 + b"\xff\xfe broken", "UTF-8"),
    ],
)
def test_what_is_not_text_is_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        decode_text(data)


def test_terminal_colours_and_form_feeds_are_text() -> None:
    text = "\x1b[31mred\x1b[0m and plain\n\f next page\tcolumn\n" * 10
    assert decode_text(text.encode()) == text


@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=200))
def test_any_printable_utf8_round_trips(text: str) -> None:
    assert decode_text(text.encode()) == text


def test_the_western_preference_is_windows_1252() -> None:
    assert codecs.lookup(WESTERN).name == "cp1252"
