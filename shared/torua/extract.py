"""Entity and relation extraction from chunk text, behind the `Extractor` protocol.

- `HeuristicExtractor` needs no model, and its output depends only on the chunk's text, so
  ingesting the same text twice gives the same graph. It reads prose and markdown (code blocks,
  headings, admonition markers, HTML, front matter and table header rows are not text; a chunk
  that starts inside a code block is recognised) and finds:
  - names: runs of capitalised words ("Mira Okonkwo", "University of Kalo", "Leaf Nodes");
  - terms: code spans that hold an identifier, option, flag, metric or config name
    (`TrustedHostMiddleware`, `--web.enable-admin-api`, `scrape_interval`), typed `code`; spans
    holding values, keywords, commands or expressions are skipped.
  On real documentation, capitalisation alone made entities of every word that opens a sentence,
  a table cell or a log line ("Add", "Starting", "Summary") and of labels and literals
  ("Description", "NULL", "String"), and those hubs outranked the text that answers a question. So
  a lone ordinary English word (torua.lexicon) is a name only where nothing else explains its
  capital, and labels and literals are never entities.
  Two names in one sentence (or table row) make a relation citing the chunk: typed by the verb
  phrase between adjacent names ("was founded by" -> FOUNDED_BY, weight VERB_WEIGHT), otherwise
  RELATED_TO, mere co-occurrence, with the lower CO_OCCURRENCE_WEIGHT: retrieval passes a relation
  on in proportion to its weight, and these are guesses, not stated facts.
- `LLMExtractor` asks any OpenAI-compatible chat endpoint for JSON matching `GRAPH_SCHEMA`; replies
  that are not valid JSON of that shape are retried like failed requests (torua.llm).

Entity ids come from normalised names (`entity_id`: case, possessives, surrounding punctuation and
the regular plural of a common noun folded), so every chunk and every document naming "Leaf Nodes"
or "the leaf node" points at the same entity, across extractors and runs. Pre-extracted graphs
should make their ids with `entity_id` too.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from torua.lexicon import COMMON, GENERIC, KEYWORDS, is_common, is_inflection, is_verb, leading, singular
from torua.llm import OpenAICompatible, OpenAIConfig
from torua.model import UNTYPED_RELATION, Entity, Relation

__all__ = [
    "Extraction",
    "Extractor",
    "HeuristicExtractor",
    "LLMExtractor",
    "NullExtractor",
    "GRAPH_SCHEMA",
    "entity_id",
    "entity_type",
    "relation_type",
    "sentences",
]

MAX_NAMES_PER_SENTENCE = 8  # names of a sentence that get relations: a list of 30 names is not 435 facts


@dataclass(slots=True)
class Extraction:
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)

    @property
    def mentions(self) -> list[str]:
        return [e.id for e in self.entities]


class Extractor(Protocol):
    async def extract(self, chunk_id: str, text: str) -> Extraction: ...


class NullExtractor:
    """Chunks only: no entities, no relations (`--extractor none`)."""

    async def extract(self, chunk_id: str, text: str) -> Extraction:
        return Extraction()


# --- names and ids --------------------------------------------------------------------------------

_TITLES = {
    "captain", "capt", "chancellor", "brother", "sister", "doctor", "dr", "professor", "prof", "lady", "lord",
    "king", "queen", "prince", "princess", "sir", "mr", "mrs", "ms", "master", "archivist", "general", "admiral",
    "president", "senator", "saint", "st", "mother", "father", "dame", "duke", "duchess", "count", "countess",
}
_TYPE_CUES = {
    "organization": {
        "guild", "academy", "university", "institute", "company", "industries", "labs", "council", "senate",
        "society", "order", "bank", "corporation", "inc", "ltd", "college", "school", "church", "army", "navy",
        "league", "union", "shipwrights", "foundation", "ministry", "club", "press", "works", "group",
    },
    "city": {"city", "port", "town", "village", "harbour", "harbor"},
    "place": {
        "river", "lake", "sea", "ocean", "island", "isle", "mountain", "mountains", "mount", "valley", "bay",
        "rock", "forest", "desert", "library", "tower", "castle", "reach", "coast", "strait", "straits",
        "cape", "peninsula", "plains", "hills", "gulf", "lighthouse", "market", "square", "bridge",
    },
    "work": {"codex", "book", "chronicle", "chronicles", "treaty", "song", "map", "atlas", "charter", "journal"},
    "event": {"war", "storm", "battle", "festival", "plague", "fever", "flood", "fire", "siege", "uprising"},
    "vessel": {"ship", "barque", "schooner", "galleon", "frigate"},
}


def _fold(name: str) -> str:
    name = unicodedata.normalize("NFKC", name).replace("’", "'")
    name = re.sub(r"'s\b", "", name)
    name = " ".join(name.split())
    return re.sub(r"^(the|a|an)\s+", "", name, flags=re.IGNORECASE)


_CONNECTOR_WORDS = {"of", "de", "van", "von", "da", "del", "du"}


def _key(name: str) -> str:
    """The name as an id sees it: folded (`_fold`), lower case, without surrounding punctuation, and
    the last word singular when it is the regular plural of a common noun ("Leaf Nodes" = "leaf
    node", "Metrics" = "metric"). Names that merely end in -s ("Williams", "Dallas", "Kubernetes",
    "Grey Shoals") keep it, and so do names whose head comes before "of" ("Codex of Tides")."""
    key = _fold(name).lower()
    trimmed = re.sub(r"^\W+|\W+$", "", key)
    if not trimmed:
        return key
    words = trimmed.split(" ")
    last = singular(words[-1])
    if last != words[-1] and last in COMMON and not any(w in _CONNECTOR_WORDS for w in words[1:-1]):
        words[-1] = last
    return " ".join(words)


def entity_id(name: str) -> str:
    """`ent:` + a slug of the normalised name (`_key`): readable, and the same for the same name
    everywhere, whatever its case, number or surrounding punctuation."""
    key = _key(name)
    slug = re.sub(r"[^\w]+", "-", key).strip("-")
    if slug and len(slug) <= 80:
        return f"ent:{slug}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return f"ent:{slug[:64]}-{digest}" if slug else f"ent:{digest}"


def entity_type(name: str) -> str:
    """A type from cue words in the name itself ("Port Ardent" -> city), so it never depends on context."""
    words = [w.lower().strip(".") for w in name.split()]
    for kind, cues in _TYPE_CUES.items():
        if words and (words[-1] in cues or words[0] in cues):
            return kind
    return "entity"


_FILLER = {
    "is", "was", "are", "were", "be", "been", "being", "has", "have", "had", "the", "a", "an", "its", "their",
    "his", "her", "also", "then", "later", "first", "once", "soon", "long", "still", "that", "our", "your", "my",
    "this", "these", "those", "same",
}
_COPULA = {"is", "was", "are", "were", "be", "been", "became", "becomes", "remains", "remained"}
_PREPOSITIONS = {"in", "at", "of", "on", "to", "for", "from", "by", "with", "into", "near", "as", "over", "under"}
# Words that end a clause: names on either side are not linked by the words between them.
_CONJUNCTIONS = {"and", "or", "but", "nor", "while", "whereas", "although", "where", "when", "who", "whose", "which"}


def relation_type(between: str) -> str:
    """UPPER_SNAKE verb phrase from the words between two names, or RELATED_TO when there is none."""
    between = between.strip(" \t\n,")
    if not between or re.search(r"[^\w\s'-]", between):
        return UNTYPED_RELATION
    words = between.lower().split()
    if len(words) > 6 or any(w in _CONJUNCTIONS for w in words):
        return UNTYPED_RELATION
    kept = [w for w in words if w not in _FILLER]
    if not kept or len(kept) > 3 or all(w in _PREPOSITIONS for w in kept) or not all(w.isalpha() for w in kept):
        return UNTYPED_RELATION
    # Evidence is a verb ("founded", "taught at") or a copula before a noun and a preposition ("is the
    # capital of"); "with our", "to main" or "instead of" say nothing about how the two are related.
    if not any(is_verb(w) for w in kept) and not (len(kept) > 1 and kept[-1] in _PREPOSITIONS and words[0] in _COPULA):
        return UNTYPED_RELATION
    return "_".join(kept).upper()


# --- markdown to sentences ----------------------------------------------------------------------

_ABBREV = {"dr", "mr", "mrs", "ms", "st", "prof", "capt", "gen", "no", "vs", "etc", "e.g", "i.e"}
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"')\]]*\s+")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_FENCE = re.compile(r"^\s*(?:`{3,}|~{3,})\s*(.*)$")
# Headings, admonitions (/// note, !!! tip), snippet includes ({* file *}), link definitions, rules.
_SKIP_LINE = re.compile(r"^\s*(?:#|///|!!!|\?\?\?|\{[*%].*[*%]\}\s*$|\[[^\]]+\]:\s|([-*_])(?:\s*\1){2,}\s*$)")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(?:\|\s*:?-{2,}:?\s*)*\|?\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[(?:[^\[\]]|\[[^\[\]]*\])*\]\((?:[^()\s]|\([^()\s]*\))*\)")
# [text](url "title") or [text][ref]; the text may hold one level of brackets, the url of parentheses
_LINK = re.compile(
    r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\](?:\((?:[^()\s]|\([^()\s]*\))*(?:\s+\"[^\"]*\")?\)|\[[^\]]*\])"
)
_HTML = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]*>")
_URL = re.compile(r"\b[a-zA-Z][\w+.-]*://\S+")
_EMPHASIS = re.compile(r"\*+|(?<!\w)_{1,2}|_{1,2}(?!\w)")
_ANCHOR = re.compile(r"\{\s*[#.][^}]*\}")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>])")


@dataclass(frozen=True, slots=True)
class _Segment:
    text: str  # one sentence, list item or table cell; code spans keep their backticks
    row: int = -1  # the table row of a cell; -1 for prose


def sentences(text: str) -> list[str]:
    """Sentences of plain text or markdown, and the cells of table body rows; headings, code blocks,
    admonition markers, table headers and markup are left out."""
    return [s.text.replace("`", "") for s in _segments(text)]


def _segments(text: str) -> list[_Segment]:
    lines = text.splitlines()
    lines = lines[_front_matter_end(lines) :]
    in_code = _starts_in_code(lines)
    out: list[_Segment] = []
    paragraph: list[str] = []
    rows = 0

    def flush() -> None:
        if paragraph:
            out.extend(_Segment(s) for s in _split_paragraph(" ".join(paragraph)))
            paragraph.clear()

    for i, line in enumerate(lines):
        fence = _FENCE.match(line)
        if fence:
            in_code = not in_code
            flush()
            continue
        stripped = line.strip().lstrip(">").strip()  # a blockquote is read as text
        if in_code or not stripped or _SKIP_LINE.match(stripped):
            flush()
            continue
        if "|" in stripped and _is_table_row(lines, i, stripped):
            flush()
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if _TABLE_SEPARATOR.match(stripped) or ("|" in nxt and _TABLE_SEPARATOR.match(nxt)):
                continue  # the separator and the header row name columns, not things
            rows += 1
            for cell in _cells(stripped):
                out.extend(_Segment(sentence, rows) for sentence in _split_paragraph(_clean(cell)))
            continue
        if _LIST_MARK.match(line):
            flush()
            stripped = _LIST_MARK.sub("", line).strip()
        cleaned = _clean(stripped)
        if cleaned:
            paragraph.append(cleaned)
        else:
            flush()
    flush()
    return out


def _front_matter_end(lines: list[str]) -> int:
    """YAML front matter (`---` ... `---` at the top) is metadata, not text."""
    if lines and lines[0].strip() == "---":
        for i, line in enumerate(lines[1:40], start=1):
            if line.strip() in ("---", "..."):
                return i + 1
    return 0


def _starts_in_code(lines: list[str]) -> bool:
    """Does the text begin inside a code block? A chunk can start in the middle of one, and then its
    first fence closes rather than opens. A fence with an info string (```python) always opens a
    block, so the parity that makes fewer of those close one wins; on a tie, a text whose first fence
    is bare starts in code when most lines before that fence look like code."""
    fences = [(i, bool(m.group(1).strip())) for i, line in enumerate(lines) if (m := _FENCE.match(line))]
    if not fences:  # all code (the middle of a long block) when at least two lines in three look like it
        body = [ln for ln in lines if ln.strip() and not _NEUTRAL_LINE.match(ln)]
        return len(body) >= 3 and sum(map(_looks_like_code, body)) * 3 >= len(body) * 2
    wrong = [0, 0]  # info-string fences that would close a block, starting outside / inside one
    for start in (0, 1):
        for n, (_, info) in enumerate(fences):
            if info and (n + start) % 2 == 1:
                wrong[start] += 1
    if wrong[0] != wrong[1]:
        return wrong[1] < wrong[0]
    if fences[0][1]:
        return False
    head = [ln for ln in lines[: fences[0][0]] if ln.strip() and not _NEUTRAL_LINE.match(ln)]
    return bool(head) and sum(map(_looks_like_code, head)) * 2 > len(head)


_CODE_LINE = re.compile(
    r"[{};=]|\(\)|^\s*(?:\$ |>>>|#!|//|@)|^\s*(?:def|class|import|from|return|async|await|elif|except)\b"
    r"|^\s*-?\s*[a-z_][\w.-]*:(?:\s|$)|^[A-Z]+:\s|^\S+$|-->|->|^[a-z_][\w:]* [-+\d.eE]+$"
)


_NEUTRAL_LINE = re.compile(r"\s*(?:#|<!--|-->|\[[^\]]+\]:)")  # headings, comments and link definitions


def _looks_like_code(line: str) -> bool:
    text = line.strip()
    if text.startswith(("|", ">", "///", "!!!")) or text.startswith(("* ", "+ ")):
        return False
    text = _CODE_SPAN.sub("", _HTML.sub(" ", text) if "<" in text else text).strip()
    return bool(text) and bool(_CODE_LINE.search(text))


def _is_table_row(lines: list[str], i: int, stripped: str) -> bool:
    """A line with pipes in a block that has a table separator, or one that starts with a pipe."""
    if not _CODE_SPAN.sub("", stripped).count("|"):
        return False
    if stripped.startswith("|"):
        return True
    for step in (-1, 1):
        j = i
        while 0 <= j < len(lines) and lines[j].strip() and "|" in lines[j]:
            if _TABLE_SEPARATOR.match(lines[j].strip()):
                return True
            j += step
    return False


def _cells(row: str) -> list[str]:
    """Cells of a table row, splitting on pipes outside code spans."""
    protected = _CODE_SPAN.sub(lambda m: m.group(0).replace("|", "\x00"), row.replace("\\|", "\x00"))
    cells = [c.replace("\x00", "|").strip() for c in protected.strip().strip("|").split("|")]
    return [c for c in cells if c]


def _clean(line: str) -> str:
    """Markdown and HTML markup out of one line: link text kept, images, tags and URLs dropped, code
    spans kept in backticks."""
    if "](" in line or "][" in line:
        line = _LINK.sub(r"\1", _IMAGE.sub(" ", line))
    if "`" not in line:
        return " ".join(_clean_text(line).split())
    parts: list[str] = []
    last = 0
    for m in _CODE_SPAN.finditer(line):
        parts.append(_clean_text(line[last : m.start()]))
        parts.append("`" + m.group(2).strip().replace("`", "'") + "`" if m.group(2).strip() else " ")
        last = m.end()
    parts.append(_clean_text(line[last:]))
    return " ".join("".join(parts).split())


def _clean_text(text: str) -> str:
    if "<" in text:
        text = _HTML.sub(" ", text)
    if "://" in text:
        text = _URL.sub(" ", text)
    if "{" in text:
        text = _ANCHOR.sub(" ", text)
    if "\\" in text:
        text = _ESCAPE.sub(r"\1", text)
    if "*" in text or "_" in text:
        text = _EMPHASIS.sub("", text)
    return text.replace("`", "")


def _split_paragraph(p: str) -> list[str]:
    masked = _mask(p)[0]
    parts: list[str] = []
    start = 0
    for m in _SENTENCE_BREAK.finditer(masked):
        word = masked[start : m.start()].rsplit(None, 1)[-1].lower() if masked[start : m.start()].strip() else ""
        if word in _ABBREV or (len(word) == 1 and word.isalpha()):  # "Dr. Vale", "J. Reed"
            continue
        parts.append(p[start : m.end()].strip())
        start = m.end()
    if p[start:].strip():
        parts.append(p[start:].strip())
    return parts


def _mask(text: str) -> tuple[str, list[tuple[int, int, str]]]:
    """`text` with every code span blanked out (same length, so offsets hold), and the spans."""
    spans = [(m.start(), m.end(), m.group(2)) for m in _CODE_SPAN.finditer(text)]
    if not spans:
        return text, spans
    chars = list(text)
    for a, b, _ in spans:
        chars[a:b] = "\x00" * (b - a)
    return "".join(chars), spans


# --- the heuristic extractor ----------------------------------------------------------------------

_STOP = {
    "the", "a", "an", "in", "on", "at", "when", "after", "before", "while", "during", "since", "although",
    "however", "it", "he", "she", "they", "we", "i", "you", "his", "her", "their", "its", "this", "that", "these",
    "those", "there", "here", "today", "yesterday", "tomorrow", "later", "each", "every", "many", "some", "most",
    "all", "both", "few", "for", "from", "by", "with", "without", "under", "over", "of", "and", "but", "or",
    "yet", "so", "if", "unless", "because", "as", "once", "then", "now", "our", "your", "my", "who", "what",
    "which", "where", "why", "how", "not", "no", "yes", "also", "only", "even", "still", "one", "two", "three",
    "to", "into", "upon", "near", "until", "between", "among", "through", "across", "never", "always", "no one",
    "nobody", "everyone", "someone", "another", "other", "such", "than", "do", "does", "did", "be", "is", "was",
    "were", "are", "has", "had", "have", "will", "would", "can", "could", "may", "might", "must", "should",
    "january", "february", "march", "april", "june", "july", "august", "september", "october",
    "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "him", "them", "us", "me", "whose", "like", "unlike", "beyond", "along", "around", "about", "against",
    "despite", "though", "whenever", "wherever", "meanwhile", "instead", "indeed", "perhaps", "finally",
}
_TOKEN = re.compile(r"[^\W\d_](?:[\w'’-]*\w)?")
_CONNECTORS = ("of", "of the", "de", "van", "von", "da", "del", "la", "le", "du")
_CLAUSE_BREAK = re.compile(r"[:;(\[\"“—–|]|\s-\s")
_CONTRACTION = re.compile(r"['’](?:ll|re|ve|m|d|t)$", re.IGNORECASE)
_ACRONYM_PLURAL = re.compile(r"[A-Z]{2,}[0-9]?s")  # "APIs", "URLs": the plural of an acronym
_NUMBER_AFTER = re.compile(r" (\d{1,3})(?![\w%]|[.,:]\d)")  # "Yulvenor 5", "Windows 10"
_CODE_TERM = re.compile(r"-{0,2}[A-Za-z_][\w.\-/:]*\w")
_CODE_CALL = re.compile(r"([A-Za-z_][\w.:]*)(?:\{.*\}|\(.*\))")  # "up{job=...}", "rate(...)"
MAX_NAME_WORDS = 6
MAX_CODE_WORDS = 2  # `fastapi dev`, `uvicorn main:app`; a longer span is a command or an expression
MAX_CODE_CHARS = 64
WINDOW = 3  # a name is linked by co-occurrence to at most the next WINDOW names of its sentence
# Relation.weight is the extractor's confidence; retrieval passes a relation's weight on in
# proportion to it. A verb between two names is a guess at the fact (measured on documentation:
# most such types are noise there), co-occurrence a weaker one. Values chosen by measurement
# (README: retrieval quality); facts given by an LLM or by the user keep weight 1.0.
VERB_WEIGHT = 0.3  # typed by the verb phrase between two names
CO_OCCURRENCE_WEIGHT = 0.1  # RELATED_TO (same sentence, no verb between)
CODE_TYPE = "code"


@dataclass(frozen=True, slots=True)
class _Mention:
    id: str
    name: str
    type: str
    start: int
    end: int


def _capitalised(word: str) -> bool:
    return word[0].isupper()


def _bare(word: str) -> str:
    w = word.lower()
    return w[:-2] if w.endswith(("'s", "’s")) else w


def _generic(word: str) -> bool:
    w = word.lower()
    return w in GENERIC or singular(w) in GENERIC


def _junk(word: str) -> bool:
    """Hex colours, hashes and keys: strings of letters and digits that name nothing."""
    digits = sum(c.isdigit() for c in word)
    if digits and len(word) >= 6 and re.fullmatch(r"[0-9A-Fa-f]+", word):
        return True
    core = word.replace("-", "")
    return len(core) >= 12 and digits >= 2 and core.isalnum() and not core.isupper() and not core.islower()


@dataclass(slots=True)
class _Sentence:
    text: str  # code spans blanked out
    row: int
    toks: list[tuple[str, int, int]]
    initial: list[bool]  # does the token open the sentence or a clause (after ":", "(", a dash ...)?
    codes: list[tuple[int, int, str]]


def _parse(seg: _Segment) -> _Sentence:
    masked, codes = _mask(seg.text)
    toks = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(masked)]
    initial = [True] * len(toks)
    for i in range(1, len(toks)):
        gap = masked[toks[i - 1][2] : toks[i][1]]
        initial[i] = gap != " " and bool(_CLAUSE_BREAK.search(gap))
    return _Sentence(masked, seg.row, toks, initial, codes)


def _names(s: _Sentence, inner: set[str]) -> list[_Mention]:
    """Names in one sentence; `inner`: words seen capitalised inside a sentence of the same text."""
    toks = s.toks
    found: list[_Mention] = []
    i = 0
    while i < len(toks):
        word = toks[i][0]
        if not _capitalised(word) or (_bare(word) in _STOP and word.lower() != "the"):
            i += 1
            continue
        run = [i]
        j = i + 1
        while j < len(toks):
            gap = s.text[toks[j - 1][2] : toks[j][1]]
            if gap != " " and not (gap == ". " and toks[j - 1][0].lower() in _TITLES):  # "Dr. Vale"
                break
            if _capitalised(toks[j][0]) and _bare(toks[j][0]) not in _STOP and not _CONTRACTION.search(toks[j][0]):
                run.append(j)
                j += 1
                continue
            # "University of Kalo", "Order of the Silver Lantern"
            k = _connector_end(toks, s.text, j)
            if k is None:
                break
            run.extend(range(j, k + 1))
            j = k + 1
        mention = _mention(s, run, inner)
        if mention is not None:
            found.append(mention)
        i = j
    return found


def _connector_end(toks: list[tuple[str, int, int]], sentence: str, j: int) -> int | None:
    for conn in _CONNECTORS:
        parts = conn.split()
        k = j + len(parts)
        if k >= len(toks) or [t[0].lower() for t in toks[j:k]] != parts:
            continue
        if any(sentence[toks[m - 1][2] : toks[m][1]] != " " for m in range(j + 1, k + 1)):
            continue
        if _capitalised(toks[k][0]) and _bare(toks[k][0]) not in _STOP:
            return k
    return None


def _mention(s: _Sentence, run: list[int], inner: set[str]) -> _Mention | None:
    """The name a run of capitalised words stands for, if any: without a leading "The" or title
    (a title marks a person), an opening verb ("Install Docker"), or labels and literals at either
    end ("Info MetricFamily", "NATS OK"). A lone ordinary word is a name only when nothing explains
    its capital: not the start of a sentence or clause, unless the text also capitalises it inside
    one ("Quell is quiet. Ships sail to Quell."), and not a word left over from a trimmed label."""
    words = list(run)
    kind = ""
    while words and s.toks[words[0]][0].lower() == "the":
        words = words[1:]
    while len(words) > 1 and s.toks[words[0]][0].lower().rstrip(".") in _TITLES:  # "Captain Ilse Marrow"
        words = words[1:]
        kind = "person"
    before = len(words)
    if s.initial[run[0]]:  # "Install Docker", "Using FastAPI": the verb opens the sentence, the name follows
        while len(words) > 1 and leading(s.toks[words[0]][0]):
            words = words[1:]
    while words and _label(s.toks[words[0]][0]):
        words = words[1:]
    while words and (_label(s.toks[words[-1]][0]) or is_inflection(s.toks[words[-1]][0])):
        words = words[:-1]
    if not words or len(words) > MAX_NAME_WORDS:  # a longer run is a title in title case, not a name
        return None
    toks = [s.toks[i] for i in words]
    if len(toks) == 1:
        w = toks[0][0]
        bare = _bare(w)
        if bare in _STOP or bare in _TITLES or _CONTRACTION.search(w) or _junk(w) or is_inflection(w):
            return None
        trimmed = len(words) < before
        if is_common(bare) and (w.isupper() or trimmed or (s.initial[words[0]] and w not in inner)):
            return None  # "NULL", "GET"; "Technical" of "Technical Details"; "Sailors come ..."
        if _ACRONYM_PLURAL.fullmatch(w):  # "APIs" is the API
            toks = [(w[:-1], toks[0][1], toks[0][2] - 1)]
    name = _fold(" ".join(w for w, _, _ in toks))
    end = toks[-1][2]
    number = _NUMBER_AFTER.match(s.text, end)
    if number and words[-1] == run[-1]:  # "the Yulvenor 5": a model number is part of the name
        name, end = f"{name} {number.group(1)}", number.end()
    if len(name) < 2:
        return None
    return _Mention(entity_id(name), name, kind or entity_type(name), toks[0][1], end)


def _label(word: str) -> bool:
    return _generic(word) or word.lower() in _CONNECTORS


def _code_term(raw: str) -> str | None:
    """The identifier, option, flag, metric or config name a code span holds, or None when it holds
    a value, a keyword, a command or an expression."""
    c = raw.strip()
    call = _CODE_CALL.fullmatch(c)
    if call:
        c = call.group(1)  # a metric selector or a call names its metric or function
    if len(c) > 2 and c[0] == "<" and c[-1] == ">":
        c = c[1:-1]  # "<scrape_config>"
    c = c.removeprefix("@").rstrip(":,;")
    parts = c.split(" ")
    if len(c) > MAX_CODE_CHARS or "://" in c or len(parts) > MAX_CODE_WORDS:
        return None
    if not all(_CODE_TERM.fullmatch(p) for p in parts):
        return None
    core = c.lstrip("-")
    lower = core.lower()
    if len(core) < 2 or lower in GENERIC or any(p.lower() in KEYWORDS for p in parts) or _junk(core):
        return None
    return c


def _code_mentions(s: _Sentence) -> list[_Mention]:
    out = []
    for start, end, raw in s.codes:
        term = _code_term(raw)
        if term is not None:
            out.append(_Mention(entity_id(term), term, CODE_TYPE, start, end))
    return out


class HeuristicExtractor:
    """Names by capitalisation, terms from code spans, relations by the words between two names in a
    sentence. Deterministic, no model (see the module docstring)."""

    async def extract(self, chunk_id: str, text: str) -> Extraction:
        return self.extract_sync(chunk_id, text)

    def extract_sync(self, chunk_id: str, text: str) -> Extraction:
        parsed = [_parse(seg) for seg in _segments(text)]
        inner = {
            t[0] for s in parsed if s.row < 0 for t, first in zip(s.toks, s.initial) if not first and _capitalised(t[0])
        }
        entities: dict[str, Entity] = {}
        pairs: list[tuple[_Mention, _Mention, str]] = []
        row_key: dict[int, _Mention] = {}
        for s in parsed:
            names = _dedupe(sorted(_names(s, inner) + _code_mentions(s), key=lambda m: m.start))
            for m in names:
                known = entities.get(m.id)
                if known is None:
                    entities[m.id] = Entity(id=m.id, name=m.name, type=m.type)
                elif known.type == "entity" and m.type != "entity":
                    known.type = m.type  # a later mention says what it is ("`FastAPI`" -> code)
            linked = names[:MAX_NAMES_PER_SENTENCE]
            for a_i, a in enumerate(linked):
                for step, b in enumerate(linked[a_i + 1 : a_i + 1 + WINDOW]):
                    kind = relation_type(s.text[a.end : b.start]) if step == 0 else UNTYPED_RELATION
                    pairs.append((a, b, kind))
            if s.row >= 0 and names:  # a table row: its first name is what the other cells describe
                key = row_key.setdefault(s.row, names[0])
                pairs.extend((key, b, UNTYPED_RELATION) for b in names[:MAX_NAMES_PER_SENTENCE] if b is not key)
        return Extraction(list(entities.values()), _relations(pairs, chunk_id))


def _relations(pairs: list[tuple[_Mention, _Mention, str]], chunk_id: str) -> list[Relation]:
    """One relation per (source, type, target); co-occurrence only where no verb links the pair."""
    typed = {frozenset((a.id, b.id)) for a, b, kind in pairs if kind != UNTYPED_RELATION}
    out: dict[tuple[str, str, str], Relation] = {}
    for a, b, kind in pairs:
        if a.id == b.id or (kind == UNTYPED_RELATION and frozenset((a.id, b.id)) in typed):
            continue
        if kind == UNTYPED_RELATION and (b.id, kind, a.id) in out:
            continue
        weight = VERB_WEIGHT if kind != UNTYPED_RELATION else CO_OCCURRENCE_WEIGHT
        out.setdefault((a.id, kind, b.id), Relation(source=a.id, target=b.id, type=kind, weight=weight, chunks=[chunk_id]))
    return list(out.values())


def _dedupe(mentions: list[_Mention]) -> list[_Mention]:
    seen: set[str] = set()
    out = []
    for m in mentions:
        if m.id not in seen:
            seen.add(m.id)
            out.append(m)
    return out


# --- the LLM extractor ----------------------------------------------------------------------------

GRAPH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "entities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "type": {"type": "string"}, "description": {"type": "string"}},
                "required": ["name", "type", "description"],
                "additionalProperties": False,
            },
        },
        "relations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"source": {"type": "string"}, "target": {"type": "string"}, "type": {"type": "string"}},
                "required": ["source", "target", "type"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["entities", "relations"],
    "additionalProperties": False,
}

_SYSTEM = (
    "You extract a knowledge graph from a passage. Reply with one JSON object only, matching this JSON "
    "schema: " + json.dumps(GRAPH_SCHEMA) + ". Entities: the people, organisations, places, things and events "
    "the passage names, with their names as written, a lowercase one-word type (person, organization, city, "
    "place, work, event, ...) and a one-sentence description from the passage. Relations: facts the passage "
    "states between two of those entities; source and target are entity names from your list, type is an "
    "UPPER_SNAKE_CASE verb phrase such as FOUNDED or BORN_IN."
)


class _LLMEntity(msgspec.Struct):
    name: str
    type: str = ""
    description: str = ""


class _LLMRelation(msgspec.Struct):
    source: str
    target: str
    type: str = UNTYPED_RELATION


class _LLMGraph(msgspec.Struct):
    entities: list[_LLMEntity] = msgspec.field(default_factory=list)
    relations: list[_LLMRelation] = msgspec.field(default_factory=list)


def _parse_graph(content: str) -> _LLMGraph:
    """The model's JSON, tolerating a markdown fence around it; anything else raises ValueError."""
    content = content.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", content, flags=re.DOTALL)
    if fenced:
        content = fenced.group(1)
    try:
        return msgspec.json.decode(content, type=_LLMGraph)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ValueError(f"the model's output is not a JSON graph ({exc})") from None


class LLMExtractor:
    """Extraction by an OpenAI-compatible chat model, with a JSON schema, retries and a rate limit."""

    def __init__(self, config: OpenAIConfig) -> None:
        self.api = OpenAICompatible(config)

    async def extract(self, chunk_id: str, text: str) -> Extraction:
        messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": text}]
        response_format = {"type": "json_schema", "json_schema": {"name": "graph", "schema": GRAPH_SCHEMA, "strict": True}}
        graph = await self.api.chat_parsed(messages, _parse_graph, response_format=response_format)
        return _to_extraction(graph, chunk_id)


def _to_extraction(graph: _LLMGraph, chunk_id: str) -> Extraction:
    entities: dict[str, Entity] = {}

    def add(name: str, etype: str = "", description: str = "") -> str | None:
        name = _fold(name)
        if not name:
            return None
        eid = entity_id(name)
        if eid not in entities:
            kind = re.sub(r"[^\w-]+", "_", etype.strip().lower()) or entity_type(name)
            entities[eid] = Entity(id=eid, name=name, type=kind[:256], description=description.strip())
        return eid

    for e in graph.entities:
        add(e.name, e.type, e.description)
    relations: dict[tuple[str, str, str], Relation] = {}
    for r in graph.relations:
        source, target = add(r.source), add(r.target)
        if source is None or target is None or source == target:
            continue
        kind = re.sub(r"[^A-Za-z0-9]+", "_", r.type).strip("_").upper()[:256] or UNTYPED_RELATION
        relations.setdefault((source, kind, target), Relation(source=source, target=target, type=kind, chunks=[chunk_id]))
    return Extraction(list(entities.values()), list(relations.values()))
