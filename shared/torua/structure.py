"""Topics from a document's own structure: its title and the headings of the sections a chunk is in.

A heading is what its section is about, in the author's words ("Disable the automatic docs",
"TrustedHostMiddleware"), and every chunk of the section is about it too, even the ones that never
repeat those words. Ingest makes each heading a `topic` entity that the section's chunks mention,
so retrieval can reach a section by its heading the way it reaches a passage by a name it states.
The same heading text in two documents is one topic (an entity id comes from the name), and a
heading that many sections share ("Recap", "Technical Details") is a hub that retrieval discounts.

Markdown ATX headings (`# ...` to `###### ...`, outside code fences) and a YAML front-matter
`title:` are read; plain text has no structure and gets no topics.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

__all__ = ["Heading", "Sections", "TOPIC_TYPE", "headings"]

TOPIC_TYPE = "topic"
MAX_TOPIC_CHARS = 120  # a longer "heading" is a paragraph someone marked up: not a topic name

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_ANCHOR = re.compile(r"\{\s*#[^}]*\}\s*$")  # "Title { #title }" (mkdocs attribute lists)
_MARKUP = re.compile(r"[*_`]+|<[^>]+>")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_FRONT_TITLE = re.compile(r"^title:\s*[\"']?(.+?)[\"']?\s*$")


@dataclass(frozen=True, slots=True)
class Heading:
    offset: int  # character offset of the heading line in the document
    level: int  # 0 for the front-matter title, 1-6 for # to ######
    text: str


def _clean(raw: str) -> str:
    text = _ANCHOR.sub("", raw)
    text = _LINK.sub(r"\1", text)
    text = _MARKUP.sub("", text)
    return " ".join(text.split()).strip(" :")


def headings(text: str) -> list[Heading]:
    """The document's headings in order, cleaned of markup, anchors and links."""
    out: list[Heading] = []
    offset = 0
    in_code = False
    lines = text.splitlines(keepends=True)
    if lines and lines[0].strip() == "---":  # YAML front matter: only its title is read
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() == "---":
                offset = sum(len(x) for x in lines[: i + 1])
                lines = lines[i + 1 :]
                break
            m = _FRONT_TITLE.match(line.strip())
            if m and _clean(m.group(1)):
                out.append(Heading(0, 0, _clean(m.group(1))))
    for line in lines:
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            m = _ATX.match(line.rstrip("\r\n"))
            if m:
                name = _clean(m.group(2))
                if name and len(name) <= MAX_TOPIC_CHARS:
                    out.append(Heading(offset, len(m.group(1)), name))
        offset += len(line)
    return out


class Sections:
    """A document's headings, indexed once so that each of its chunks' topics costs a binary search
    (working them out from the list of headings walked every heading before the chunk: quadratic
    in a long document)."""

    __slots__ = ("_found", "_offsets", "_paths")

    def __init__(self, found: list[Heading]) -> None:
        self._found = found
        self._offsets = [h.offset for h in found]
        # The section path in force at each heading: it and every enclosing one.
        paths: list[tuple[Heading, ...]] = []
        path: tuple[Heading, ...] = ()
        for h in found:
            while path and path[-1].level >= h.level:
                path = path[:-1]
            path = (*path, h)
            paths.append(path)
        self._paths = paths

    def topics(self, start: int, end: int) -> list[str]:
        """Headings a chunk `text[start:end]` is under: those in force where it starts (its section
        and every enclosing one) and those of the sections beginning inside it, in document order."""
        before = bisect_right(self._offsets, start)
        path = self._paths[before - 1] if before else ()
        inside = self._found[before : bisect_left(self._offsets, end, lo=before)]
        return list(dict.fromkeys(h.text for h in (*path, *inside)))
