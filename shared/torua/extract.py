"""Entity and relation extraction from chunk text, behind the `Extractor` protocol.

- `HeuristicExtractor` needs no model: capitalised names become entities, two names in one
  sentence become a relation (typed by the short verb phrase between them when there is one,
  otherwise RELATED_TO), each relation citing its chunk as provenance. Output depends only on the
  text, so ingesting the same text twice gives the same graph.
- `LLMExtractor` asks any OpenAI-compatible chat endpoint for JSON matching `GRAPH_SCHEMA`; replies
  that are not valid JSON of that shape are retried like failed requests (torua.llm).

Entity ids come from normalised names (`entity_id`), so every chunk and every document naming
"Mira Okonkwo" points at the same entity, across extractors and runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from torua.llm import OpenAICompatible, OpenAIConfig
from torua.model import Entity, Relation

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

MAX_NAMES_PER_SENTENCE = 8  # pairs grow quadratically: a list of 30 names is not 435 facts


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


def entity_id(name: str) -> str:
    """`ent:` + a slug of the normalised name: readable, and the same for the same name everywhere."""
    key = _fold(name).lower()
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
    "his", "her", "also", "then", "later", "first", "once", "soon", "long", "still", "that",
}
_PREPOSITIONS = {"in", "at", "of", "on", "to", "for", "from", "by", "with", "into", "near", "as", "over", "under"}
# Words that end a clause: names on either side are not linked by the words between them.
_CONJUNCTIONS = {"and", "or", "but", "nor", "while", "whereas", "although", "where", "when", "who", "whose", "which"}


def relation_type(between: str) -> str:
    """UPPER_SNAKE verb phrase from the words between two names, or RELATED_TO when there is none."""
    between = between.strip(" \t\n,")
    if not between or re.search(r"[^\w\s'-]", between):
        return "RELATED_TO"
    words = between.lower().split()
    if len(words) > 6 or any(w in _CONJUNCTIONS for w in words):
        return "RELATED_TO"
    kept = [w for w in words if w not in _FILLER]
    if not kept or len(kept) > 3 or all(w in _PREPOSITIONS for w in kept) or not all(w.isalpha() for w in kept):
        return "RELATED_TO"
    return "_".join(kept).upper()


# --- sentences ------------------------------------------------------------------------------------

_ABBREV = {"dr", "mr", "mrs", "ms", "st", "prof", "capt", "gen", "no", "vs", "etc", "e.g", "i.e"}
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"')\]]*\s+")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


def sentences(text: str) -> list[str]:
    """Sentences of plain text or markdown; headings and code fences are left out."""
    out: list[str] = []
    paragraph: list[str] = []
    in_code = False

    def flush() -> None:
        if paragraph:
            out.extend(_split_paragraph(" ".join(paragraph)))
            paragraph.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            flush()
            continue
        if in_code or stripped.startswith("#") or not stripped:
            flush()
            continue
        if _LIST_MARK.match(line):
            flush()
            stripped = _LIST_MARK.sub("", line).strip()
        paragraph.append(re.sub(r"[*_`]+", " ", stripped))
    flush()
    return out


def _split_paragraph(p: str) -> list[str]:
    parts: list[str] = []
    start = 0
    for m in _SENTENCE_BREAK.finditer(p):
        word = p[start : m.start()].rsplit(None, 1)[-1].lower() if p[start : m.start()].strip() else ""
        if word in _ABBREV or (len(word) == 1 and word.isalpha()):  # "Dr. Vale", "J. Reed"
            continue
        parts.append(p[start : m.end()].strip())
        start = m.end()
    if p[start:].strip():
        parts.append(p[start:].strip())
    return parts


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
_TOKEN = re.compile(r"[^\W\d_][\w'’-]*")
_CONNECTORS = ("of", "of the", "de", "van", "von", "da", "del", "la", "le", "du")


@dataclass(frozen=True, slots=True)
class _Mention:
    id: str
    name: str
    type: str
    start: int
    end: int


def _capitalised(word: str) -> bool:
    return word[0].isupper()


def _names(sentence: str, inner: set[str]) -> list[_Mention]:
    """Names in one sentence; `inner`: words seen capitalised inside a sentence of the same text."""
    toks = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(sentence)]
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
            gap = sentence[toks[j - 1][2] : toks[j][1]]
            if gap != " " and not (gap == ". " and toks[j - 1][0].lower() in _TITLES):  # "Dr. Vale"
                break
            if _capitalised(toks[j][0]) and _bare(toks[j][0]) not in _STOP:
                run.append(j)
                j += 1
                continue
            # "University of Kalo", "Order of the Silver Lantern"
            k = _connector_end(toks, sentence, j)
            if k is None:
                break
            run.extend(range(j, k + 1))
            j = k + 1
        mention = _mention(toks, run, at_start=(i == 0), inner=inner)
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


def _mention(toks: list[tuple[str, int, int]], run: list[int], at_start: bool, inner: set[str]) -> _Mention | None:
    words = [toks[r] for r in run]
    kind = ""
    while words and words[0][0].lower() == "the":
        words = words[1:]
    while len(words) > 1 and words[0][0].lower().rstrip(".") in _TITLES:  # "Captain Ilse Marrow"
        words = words[1:]
        kind = "person"
    if not words:
        return None
    if len(words) == 1:
        w = _bare(words[0][0])
        if w in _STOP or w in _TITLES:
            return None
        # "Sailors come ...": a lone capitalised word opening a sentence is a name only if the text
        # also capitalises it elsewhere ("... the north quay of Tessaly").
        if at_start and len(run) == 1 and words[0][0] not in inner:
            return None
    name = _fold(" ".join(w for w, _, _ in words))
    if len(name) < 2:
        return None
    return _Mention(entity_id(name), name, kind or entity_type(name), words[0][1], words[-1][2])


def _bare(word: str) -> str:
    return re.sub(r"['’]s$", "", word.lower())


class HeuristicExtractor:
    """Names by capitalisation, relations by co-occurrence in a sentence. Deterministic, no model."""

    async def extract(self, chunk_id: str, text: str) -> Extraction:
        return self.extract_sync(chunk_id, text)

    def extract_sync(self, chunk_id: str, text: str) -> Extraction:
        entities: dict[str, Entity] = {}
        relations: dict[tuple[str, str, str], Relation] = {}
        found = sentences(text)
        inner = {w for sent in found for w in _TOKEN.findall(sent)[1:] if _capitalised(w)}
        for sentence in found:
            names = _dedupe(_names(sentence, inner))[:MAX_NAMES_PER_SENTENCE]
            for m in names:
                entities.setdefault(m.id, Entity(id=m.id, name=m.name, type=m.type))
            for a_i, a in enumerate(names):
                for b_i in range(a_i + 1, len(names)):
                    b = names[b_i]
                    kind = relation_type(sentence[a.end : b.start]) if b_i == a_i + 1 else "RELATED_TO"
                    key = (a.id, kind, b.id)
                    relations.setdefault(key, Relation(source=a.id, target=b.id, type=kind, chunks=[chunk_id]))
        return Extraction(list(entities.values()), list(relations.values()))


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
    type: str = "RELATED_TO"


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
        kind = re.sub(r"[^A-Za-z0-9]+", "_", r.type).strip("_").upper()[:256] or "RELATED_TO"
        relations.setdefault((source, kind, target), Relation(source=source, target=target, type=kind, chunks=[chunk_id]))
    return Extraction(list(entities.values()), list(relations.values()))
