"""Loading files into Torua: read, chunk, extract, (embed), upsert in batches, then mark as done.

Sources: `.txt` and `.md` files are documents; `.jsonl` files hold pre-extracted graphs, one
`{"documents": [...], "chunks": [...], "entities": [...], "relations": [...]}` object per line,
written as given (no chunking, no extraction). Directories are walked recursively.

Idempotence: every id is derived from content — a document's from the hash of its file's bytes,
a chunk's from its document id and position, an entity's from its normalised name — so a second
run would write identical data. It writes nothing at all: after a unit (a document, or a whole
JSONL file) has been acknowledged, the KV key `ingested:<id>` is set, and units whose key exists
are skipped (`force=True` ignores the keys).

Provenance: a relation stated by several chunks keeps all of them. The chunks of this run are
merged with those already stored for the same (source, type, target), read back before writing,
since an upsert replaces a relation's `chunks`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar, TypeVarTuple

import msgspec
from tqdm import tqdm

from torua.chunking import Chunker, TokenChunker
from torua.client import Client
from torua.embedding import Embedder
from torua.errors import BadRequest, NotFound, Overloaded
from torua.extract import Extraction, Extractor, HeuristicExtractor, entity_id
from torua.model import Chunk, Document, Entity, Relation, Tokens, UpsertReply
from torua.structure import TOPIC_TYPE, Sections, headings
from torua.text import entity_embedding_text
from torua.textfile import decode_text

__all__ = [
    "IngestOptions",
    "IngestStats",
    "Ingester",
    "Progress",
    "discover",
    "document_id",
    "ingest_paths",
    "ingest_texts",
    "upsert_waiting",
    "MARKER_PREFIX",
    "SUPPORTED_SUFFIXES",
]

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".jsonl")
MARKER_PREFIX = "ingested:"
MAX_BATCH_BYTES = 1_000_000  # well under NATS's max_payload, and a short stall for the router's embedder
NEIGHBOR_GROUP = 200  # relation sources per provenance read

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True, slots=True)
class IngestOptions:
    max_tokens: int = 256  # per chunk, counted as the retriever counts (chars / 4)
    overlap: int = 32
    batch_size: int = 500  # records (documents + chunks + entities + relations) per upsert
    concurrency: int = 4  # upserts, marker reads and extractions in flight
    wave: int = 256  # files read and written together: bounds memory on large corpora
    force: bool = False  # ignore `ingested:` markers and write everything again
    topics: bool = True  # headings become `topic` entities mentioned by their sections' chunks (torua.structure)
    patience: float = 600.0  # seconds a batch waits, in all, while replicas behind the log refuse writes


@dataclass(slots=True)
class IngestStats:
    files: int = 0
    documents: int = 0  # units written: documents, and JSONL files
    skipped: int = 0  # units already ingested
    chunks: int = 0
    entities: int = 0
    relations: int = 0
    batches: int = 0
    seconds: float = 0.0
    tokens: Tokens = field(default_factory=dict)  # pass as `after=` to read what was written
    unreadable: list[str] = field(default_factory=list)  # "<path>: <why>" for each file left out
    waits: int = 0  # times a batch waited for replicas behind the log (write backpressure)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        return (
            f"ingested {self.documents} of {self.documents + self.skipped} documents"
            f" ({self.skipped} already ingested, skipped): {self.chunks} chunks, {self.entities} entities,"
            f" {self.relations} relations in {self.batches} batches, {self.seconds:.1f}s"
            + (f"; {len(self.unreadable)} unreadable files left out" if self.unreadable else "")
        )


# --- progress -------------------------------------------------------------------------------------


class Progress:
    """The progress bar of `torua ingest` (tqdm), on a stream (stderr): drawn when the stream is a
    terminal, or always with `enabled=True`, never with `enabled=False`; redrawn at most ten times a
    second, and left complete on its line when closed."""

    FORMAT = "{desc} [{bar:30}] {n_fmt}/{total_fmt} documents {percentage:3.0f}% {rate_noinv_fmt} ETA {remaining}{postfix}"

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None, label: str = "ingest") -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled  # None: when the stream is a terminal
        self.label = label
        self._bar: Any = None  # a tqdm bar from start() to close()

    def start(self, total: int) -> None:
        self._bar = tqdm(
            total=total, file=self.stream, desc=self.label, bar_format=self.FORMAT, ascii="-#", unit="",
            mininterval=0.1, disable=None if self.enabled is None else not self.enabled,
        )

    def advance(self, n: int = 1, note: str | None = None) -> None:
        if self._bar is not None:
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)

    def set_note(self, note: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(note)

    def warn(self, message: str) -> None:
        """One line on the stream, above the bar; silent when the bar is disabled outright."""
        if self.enabled is not False:
            tqdm.write(f"warning: {message}", file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str("done", refresh=False)
            self._bar.close()
            self._bar = None


# --- sources --------------------------------------------------------------------------------------


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """Files to ingest, in a stable order; directories recursively, hidden entries left out."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = [
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            ]
            out.extend(sorted(found))
        elif p.is_file():
            if p.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise BadRequest(f"{p}: unsupported file type {p.suffix or '(none)'}; use .txt, .md or .jsonl")
            out.append(p)
        else:
            raise BadRequest(f"{p}: no such file or directory")
    return list(dict.fromkeys(out))


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=10).hexdigest()


def document_id(content: bytes) -> str:
    """`doc:` + a hash of the content: the same text is the same document, wherever it lies."""
    return f"doc:{_digest(content)}"


def chunk_id(doc_id: str, position: int) -> str:
    return f"{doc_id}#{position}"


def _add_topics(ex: Extraction, names: list[str]) -> None:
    """The chunk's section headings as `topic` entities it mentions (after what the extractor found)."""
    known = {e.id for e in ex.entities}
    for name in names:
        eid = entity_id(name)
        if eid not in known:
            known.add(eid)
            ex.entities.append(Entity(id=eid, name=name, type=TOPIC_TYPE))


def _title(text: str, fallback: str) -> str:
    """The front matter's `title:`, else the first line after any front matter (a heading without
    its `#`), else `fallback`."""
    found = headings(text)
    if found and found[0].level == 0:
        return found[0].text[:200]
    for line in text[_body_start(text) :].splitlines():
        line = line.strip()
        if line.strip("-=*_ "):  # a rule (`---`) is no title
            return line.lstrip("#").strip()[:200] or fallback
    return fallback


def _body_start(text: str) -> int:
    """Where the text after a YAML front matter block begins (0 without one)."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end >= 0:
            after = text.find("\n", end + 4)
            return len(text) if after < 0 else after + 1
    return 0


@dataclass(slots=True)
class _Unit:
    key: str  # marker id: the document id, or jsonl:<hash> for a graph file
    path: Path | None
    text: str
    kind: str  # "text" | "jsonl"
    title: str = ""
    lines: list[_GraphLine] = field(default_factory=list)  # a JSONL file's, parsed when read


def _read(path: Path) -> _Unit:
    """A file as a unit; `BadRequest` naming the file if it cannot be read, is not text, or (JSONL)
    has a line that is not a graph line, so that nothing of it is written."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = decode_text(data)
    except BadRequest as exc:
        raise BadRequest(f"{path}: {exc.description}") from None
    if path.suffix.lower() == ".jsonl":
        unit = _Unit(f"jsonl:{_digest(data)}", path, text, "jsonl")
        unit.lines = list(_graph_lines(unit))
        return unit
    return _Unit(document_id(data), path, text, "text", _title(text, path.stem))


class _GraphLine(msgspec.Struct, forbid_unknown_fields=True):
    documents: list[Document] = msgspec.field(default_factory=list)
    chunks: list[Chunk] = msgspec.field(default_factory=list)
    entities: list[Entity] = msgspec.field(default_factory=list)
    relations: list[Relation] = msgspec.field(default_factory=list)


def _graph_lines(unit: _Unit) -> Iterable[_GraphLine]:
    for n, line in enumerate(unit.text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield msgspec.json.decode(line, type=_GraphLine)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"{unit.path}:{n}: not a graph line ({exc})") from None


# --- batches --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    documents: list[Document] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    units: set[str] = field(default_factory=set)
    records: int = 0
    size: int = 0


def _size(item: Any) -> int:
    text = getattr(item, "text", "") + getattr(item, "name", "") + getattr(item, "description", "")
    vec = getattr(item, "embedding", None)
    return 120 + len(text.encode()) + (12 * len(vec) if vec else 0) + 40 * len(getattr(item, "chunks", ()) or ())


class _Batcher:
    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self.batches: list[_Batch] = []
        self._open = _Batch()

    def add(self, kind: str, item: Any, unit: str | None = None) -> None:
        size = _size(item)
        b = self._open
        if b.records and (b.records >= self.max_records or b.size + size > MAX_BATCH_BYTES):
            self.batches.append(b)
            b = self._open = _Batch()
        getattr(b, kind).append(item)
        b.records += 1
        b.size += size
        if unit is not None:
            b.units.add(unit)

    def done(self) -> list[_Batch]:
        if self._open.records:
            self.batches.append(self._open)
            self._open = _Batch()
        out, self.batches = self.batches, []
        return out


# --- the pipeline ---------------------------------------------------------------------------------


class Ingester:
    """One ingestion run against a cluster; `run(paths)` or `run_units(...)` via the helpers below."""

    def __init__(
        self,
        client: Client,
        options: IngestOptions | None = None,
        *,
        chunker: Chunker | None = None,
        extractor: Extractor | None = None,
        embedder: Embedder | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.client = client
        self.opts = options or IngestOptions()
        self.chunker = chunker or TokenChunker(self.opts.max_tokens, self.opts.overlap)
        self.extractor = extractor or HeuristicExtractor()
        self.embedder = embedder  # None: the cluster embeds (its TORUA_EMBEDDER), the usual choice
        self.progress = progress or Progress(enabled=False)
        self.stats = IngestStats()
        self._sem = asyncio.Semaphore(max(1, self.opts.concurrency))
        self._sent_entities: set[str] = set()
        self._seen_units: set[str] = set()

    async def run(self, paths: Sequence[str | Path]) -> IngestStats:
        """Ingest files; one that cannot be read as text is left out with a warning (listed in
        `stats.unreadable`) while the others are ingested."""
        files = discover(paths)
        self.stats.files = len(files)
        w = self.opts.wave
        # A generator: each wave's files are read only when that wave starts.
        return await self._run(len(files), (self._readable(files[i : i + w]) for i in range(0, len(files), w)))

    def _readable(self, files: Sequence[Path]) -> list[_Unit]:
        units = []
        for path in files:
            try:
                units.append(_read(path))
            except BadRequest as exc:
                self.stats.unreadable.append(exc.description)
                self.progress.warn(f"left out {exc.description}")
                self.progress.advance(1)
        return units

    async def run_units(self, units: list[_Unit]) -> IngestStats:
        w = self.opts.wave
        return await self._run(len(units), (units[i : i + w] for i in range(0, len(units), w)))

    async def _run(self, total: int, waves: Iterable[list[_Unit]]) -> IngestStats:
        started = time.monotonic()
        await self._check_dimension()
        self.progress.start(total)
        try:
            for units in waves:
                await self._wave(units)
        finally:
            self.stats.seconds = round(time.monotonic() - started, 3)
            self.progress.close()
        return self.stats

    async def _check_dimension(self) -> None:
        if self.embedder is not None:
            dim = (await self.client.cluster_info()).embedding_dim
            if dim and dim != self.embedder.dim:
                raise BadRequest(
                    f"the embedder gives {self.embedder.dim}-dimensional vectors but the cluster's "
                    f"embedding_dim is {dim}"
                )

    async def _bounded(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """`fn(*args)` once one of the `concurrency` slots is free (the coroutine is created then)."""
        async with self._sem:
            return await fn(*args)

    async def _wave(self, units: list[_Unit]) -> None:
        fresh = []
        for u in units:
            if u.key in self._seen_units:  # the same content twice in one run: one document
                self.progress.advance(1)
                self.stats.skipped += 1
                continue
            self._seen_units.add(u.key)
            fresh.append(u)
        todo = fresh if self.opts.force else await self._unmarked(fresh)
        self.stats.skipped += len(fresh) - len(todo)
        self.progress.advance(len(fresh) - len(todo))
        if not todo:
            return
        self.progress.set_note("extracting")
        batcher = _Batcher(self.opts.batch_size)
        texts = [u for u in todo if u.kind == "text"]
        relations = self._add_documents(texts, await self._extract(texts), batcher)
        for unit in todo:
            if unit.kind == "jsonl":
                self._add_graph_file(unit, batcher)
        batches = batcher.done()
        pending = {u.key: sum(u.key in b.units for b in batches) for u in todo}
        empty = sum(1 for n in pending.values() if n == 0)  # e.g. an empty JSONL file: nothing to wait for
        self.stats.documents += empty
        self.progress.advance(empty)
        await self._write(batches, pending)
        self.progress.set_note("relations")
        await self._merge_provenance(relations)
        rel_batcher = _Batcher(self.opts.batch_size)
        for rel in relations.values():
            rel_batcher.add("relations", rel)
        await self._write(rel_batcher.done(), {})
        self.progress.set_note("marking")
        await asyncio.gather(*(self._bounded(self._mark, u) for u in todo))
        self.progress.set_note("")

    async def _unmarked(self, units: list[_Unit]) -> list[_Unit]:
        # Tokens for everything stored so far: a marker written by a run that just finished is seen
        # even if the replica answering has not applied it yet (it waits, or another answers).
        self._merge_tokens(await self.client.latest_tokens())

        async def marked(u: _Unit) -> bool:
            try:
                await self.client.kv_get(MARKER_PREFIX + u.key, after=self.stats.tokens)
                return True
            except NotFound:
                return False

        flags = await asyncio.gather(*(self._bounded(marked, u) for u in units))
        return [u for u, done in zip(units, flags) if not done]

    async def _mark(self, unit: _Unit) -> None:
        value = json.dumps({"source": str(unit.path) if unit.path else unit.title, "title": unit.title})
        reply = await self.client.kv_put(MARKER_PREFIX + unit.key, value)
        self._merge_tokens(reply.token or {})

    async def _extract(self, units: list[_Unit]) -> list[list[tuple[str, str, Extraction]]]:
        """Chunk every document, then extract from all their chunks at once (`concurrency` in flight)."""
        pieces = [self.chunker.split(u.text) for u in units]
        chunked = [[(chunk_id(u.key, i), p.text) for i, p in enumerate(ps)] for u, ps in zip(units, pieces)]
        flat = [c for doc in chunked for c in doc]
        found: list[Extraction] = await asyncio.gather(
            *(self._bounded(self.extractor.extract, c, t) for c, t in flat)
        )
        it = iter(found)
        out = [[(c, t, next(it)) for c, t in doc] for doc in chunked]
        if self.opts.topics:
            for unit, ps, doc in zip(units, pieces, out):
                sections = Sections(headings(unit.text))
                for p, (_, _, ex) in zip(ps, doc):
                    _add_topics(ex, sections.topics(p.start, p.end))
        return out

    def _add_documents(
        self, units: list[_Unit], extracted: list[list[tuple[str, str, Extraction]]], batcher: _Batcher
    ) -> dict[tuple[str, str, str], Relation]:
        """Documents, chunks and new entities into batches, in input order so results never depend on
        timing; returns the relations of all of them, provenance merged."""
        relations: dict[tuple[str, str, str], Relation] = {}
        for unit, chunks in zip(units, extracted):
            source = str(unit.path) if unit.path else unit.title
            batcher.add("documents", Document(id=unit.key, title=unit.title, metadata={"source": source}), unit.key)
            for position, (cid, text, ex) in enumerate(chunks):
                chunk = Chunk(id=cid, document_id=unit.key, text=text, entities=ex.mentions, position=position)
                batcher.add("chunks", chunk, unit.key)
                for e in ex.entities:
                    if e.id not in self._sent_entities:
                        self._sent_entities.add(e.id)
                        batcher.add("entities", e, unit.key)
                for r in ex.relations:
                    key = (r.source, r.type, r.target)
                    if key in relations:
                        relations[key].chunks = sorted(set(relations[key].chunks) | set(r.chunks))
                    else:
                        relations[key] = Relation(source=r.source, target=r.target, type=r.type, weight=r.weight,
                                                  properties=r.properties, chunks=sorted(r.chunks))
        return relations

    def _add_graph_file(self, unit: _Unit, batcher: _Batcher) -> None:
        for line in unit.lines:
            for kind in ("documents", "entities", "chunks", "relations"):
                for item in getattr(line, kind):
                    batcher.add(kind, item, unit.key)

    async def _merge_provenance(self, relations: dict[tuple[str, str, str], Relation]) -> None:
        """Add the chunks already stored for the same relations (an upsert replaces `chunks`)."""
        sources = sorted({s for s, _, _ in relations})
        for i in range(0, len(sources), NEIGHBOR_GROUP):
            group = sources[i : i + NEIGHBOR_GROUP]
            reply = await self.client.neighbors(group, hops=1, direction="out", limit=100_000, after=self.stats.tokens)
            for e in reply.edges:
                rel = relations.get((e.source, e.type, e.target))
                if rel is not None and e.chunks and not set(e.chunks) <= set(rel.chunks):
                    rel.chunks = sorted(set(rel.chunks) | set(e.chunks))

    async def _write(self, batches: list[_Batch], pending: dict[str, int]) -> None:
        async def one(b: _Batch) -> None:
            if self.embedder is not None:
                await asyncio.to_thread(self._embed, b)
            reply = await self._upsert(b)
            self._merge_tokens(reply.tokens)
            self.stats.batches += 1
            self.stats.chunks += len(b.chunks)
            self.stats.entities += len(b.entities)
            self.stats.relations += len(b.relations)
            finished = 0
            for key in b.units:
                pending[key] -= 1
                if pending[key] == 0:
                    finished += 1
            self.stats.documents += finished
            self.progress.advance(finished, note="writing")

        await asyncio.gather(*(self._bounded(one, b) for b in batches))

    async def _upsert(self, b: _Batch) -> UpsertReply:
        """Write a batch, waiting out refusals for up to `patience` seconds (`upsert_waiting`), so a
        large load slows down to what the replicas apply."""

        def waiting() -> None:
            self.stats.waits += 1
            self.progress.set_note("waiting for replicas")

        return await upsert_waiting(
            self.client, self.opts.patience, waiting,
            documents=b.documents, chunks=b.chunks, entities=b.entities, relations=b.relations,
        )

    def _embed(self, b: _Batch) -> None:
        assert self.embedder is not None
        missing_c = [c for c in b.chunks if c.embedding is None]
        if missing_c:
            for c, v in zip(missing_c, self.embedder.embed([c.text for c in missing_c])):
                c.embedding = v.tolist()
        missing_e = [e for e in b.entities if e.embedding is None]
        if missing_e:
            for e, v in zip(missing_e, self.embedder.embed([entity_embedding_text(e.id, e.name, e.description) for e in missing_e])):
                e.embedding = v.tolist()

    def _merge_tokens(self, more: Mapping[str, int]) -> None:
        for k, v in more.items():
            self.stats.tokens[k] = max(self.stats.tokens.get(k, 0), v)


async def upsert_waiting(
    client: Client, patience: float | None = None, on_wait: Callable[[], None] | None = None, **batch: Any
) -> UpsertReply:
    """`client.upsert(**batch)`; while the shards' replicas are too far behind the log the cluster
    refuses writes (503 with a retry hint, TORUA_MAX_APPLY_LAG; a refused write stored nothing):
    wait as told and try again, for up to `patience` seconds (None: as long as it takes), calling
    `on_wait` before each wait."""
    deadline = None if patience is None else time.monotonic() + patience
    while True:
        try:
            return await client.upsert(**batch)
        except Overloaded as exc:
            pause = (exc.retry_after_ms or 500) / 1000
            if deadline is not None and time.monotonic() + pause > deadline:
                raise
            if on_wait is not None:
                on_wait()
            await asyncio.sleep(pause)


async def ingest_paths(client: Client, paths: Sequence[str | Path], options: IngestOptions | None = None,
                       **parts: Any) -> IngestStats:
    """Ingest files and directories; `parts`: chunker, extractor, embedder, progress (see Ingester)."""
    return await Ingester(client, options, **parts).run(paths)


async def ingest_texts(client: Client, texts: Mapping[str, str], options: IngestOptions | None = None,
                       **parts: Any) -> IngestStats:
    """Ingest in-memory documents, `{title: text}`, exactly as files with that content would be."""
    units = [_Unit(document_id(t.encode()), None, t, "text", title) for title, t in texts.items()]
    return await Ingester(client, options, **parts).run_units(units)
