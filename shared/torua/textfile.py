"""What ingest accepts as text: a file's bytes decoded by their content, and binary refused.

A file's extension says nothing reliable (a PNG renamed `.txt` is still a PNG), so the bytes decide:

1. a byte-order mark names the encoding (UTF-8, UTF-16, UTF-32), and the bytes must decode in it;
2. otherwise a NUL byte means binary: no text encoding without a BOM that ingest accepts uses it;
3. strict UTF-8, the usual case;
4. otherwise the encoding is detected (charset-normalizer, the detector requests uses); nothing
   plausible means the file is refused rather than stored with replacement characters;
5. decoded text that is still mostly control characters is binary that happened to decode.

Pure: no I/O. `decode_text` raises `BadRequest` with the reason, for ingest to report.
"""

from __future__ import annotations

import codecs
import re

from charset_normalizer import from_bytes

from torua.errors import BadRequest

__all__ = ["decode_text", "MAX_CONTROL_SHARE", "WESTERN"]

# UTF-32 LE's mark begins with UTF-16 LE's, so the longer marks are tried first.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# C0 controls other than tab, newlines, vertical tab, form feed and escape (ANSI colours in logs), DEL,
# and the C1 controls that a single-byte decoding of binary produces.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")
MAX_CONTROL_SHARE = 0.01  # above this share of control characters, decoded "text" is binary
WESTERN = "cp1252"
_SAMPLE = 1 << 20  # detection looks at the first MiB: enough to decide, bounded on huge files


def decode_text(data: bytes) -> str:
    """The text in `data`, or `BadRequest` saying why there is none."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _checked(data.decode(encoding))
            except UnicodeDecodeError:
                raise BadRequest(f"not valid {encoding.removesuffix('-sig').upper()} after its byte-order mark") from None
    if b"\x00" in data[:_SAMPLE]:
        raise BadRequest("binary content (NUL bytes), not text")
    try:
        return _checked(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    encoding = _detect(data[:_SAMPLE])
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        raise BadRequest(f"not valid {encoding}, the encoding its first MiB suggests") from None
    return _checked(text)


def _detect(sample: bytes) -> str:
    """The detector's choice, except that Windows-1252 (Latin-1's superset, the usual legacy encoding
    of Western text) wins among the least messy readings: on short Western text the detector's first
    choice is often another code page that reads the same bytes as different accents."""
    matches = list(from_bytes(sample))
    if not matches:
        raise BadRequest("not text in any encoding that could be detected")
    least = min(m.chaos for m in matches)
    if any(WESTERN in m.could_be_from_charset for m in matches if m.chaos <= least):
        return WESTERN
    return matches[0].encoding


def _checked(text: str) -> str:
    sample = text[:_SAMPLE]
    if sample and len(_CONTROL.findall(sample)) > MAX_CONTROL_SHARE * len(sample):
        raise BadRequest("binary content (mostly control characters), not text")
    return text
