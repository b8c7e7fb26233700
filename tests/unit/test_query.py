"""torua.graph.query on real Kuzu: the same random graph written through the real write path
(split_upsert -> encode_entry -> apply_batch) into 1 shard and into 8 shards must answer every query
identically, and equal to one reference database built independently with only the real data (no
stubs, no relation to a never-created entity). Shard calls are plain async functions around
`execute_on_shard`: the real execution path minus NATS."""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kuzu
import msgspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torua.embedding import HashEmbedder
from torua.errors import BadRequest, Unavailable
from torua.hashing import shard_for
from torua.model import Chunk, DeleteRequest, Document, Entity, Relation, UpsertRequest
from torua_node.cypher.merge import ShardRows, merge_rows
from torua_node.cypher.planner import TABLE_COLUMNS, plan_query
from torua_node.router.query import run_query
from torua_node.shard.query import execute_on_shard, to_json_value
from torua_node.storage.schema import init_schema

from .kuzu_shards import KuzuShards

DIM = 8
EMB = HashEmbedder(DIM)
_MIB = 1024 * 1024


def open_db(path: str | Path, threads: int = 0) -> tuple[kuzu.Database, kuzu.Connection]:
    db = kuzu.Database(str(path), buffer_pool_size=64 * _MIB, max_db_size=1 << 34, max_num_threads=threads)
    conn = kuzu.Connection(db)
    init_schema(conn, DIM)
    return db, conn


# ---------------------------------------------------------------------------------------------------
# A random graph, and the model of what survives it


@dataclass
class Graph:
    batches: list[UpsertRequest | DeleteRequest]
    entities: dict[str, Entity] = field(default_factory=dict)  # what exists at the end
    relations: dict[tuple[str, str, str], Relation] = field(default_factory=dict)
    documents: dict[str, Document] = field(default_factory=dict)
    chunks: dict[str, Chunk] = field(default_factory=dict)

    @classmethod
    def after(cls, batches: list[UpsertRequest | DeleteRequest], ents: list[Entity], rels: list[Relation],
              docs: list[Document], chunks: list[Chunk], deleted: set[str]) -> Graph:
        """The batches, and what exists once they are applied: `deleted` entities gone with their
        relations, the last write of each relation winning."""
        g = cls(batches)
        g.entities = {e.id: e for e in ents if e.id not in deleted}
        for r in rels:  # last write wins per (source, type, target)
            g.relations.pop((r.source, r.type, r.target), None)
            g.relations[(r.source, r.type, r.target)] = r
        g.relations = {k: r for k, r in g.relations.items() if r.source in g.entities and r.target in g.entities}
        g.documents = {d.id: d for d in docs}
        g.chunks = {c.id: c for c in chunks}
        return g


NAMES = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ida", "Jo", "Ké", "bo"]
TYPES = ["person", "place", "thing"]
REL_TYPES = ["knows", "likes", "near"]


def random_graph(seed: int) -> Graph:
    rnd = random.Random(seed)
    ids = [f"e{i}" for i in range(50)]
    ghosts = [f"ghost{i}" for i in range(6)]  # referenced, never created
    ents = [Entity(id=i, name=rnd.choice(NAMES), type=rnd.choice(TYPES),
                   description=rnd.choice(["", "a thing", "the other"]),
                   properties={"rank": rnd.randint(0, 5), "tag": rnd.choice(["x", "y"])},
                   embedding=[rnd.randint(-4, 4) * 0.5 for _ in range(DIM)]) for i in ids]
    rels = []
    for _ in range(160):
        s = rnd.choice(ids + ghosts[:2])
        t = rnd.choice(ids + ghosts) if rnd.random() > 0.05 else s  # some self-loops
        rels.append(Relation(source=s, target=t, type=rnd.choice(REL_TYPES), weight=rnd.randint(0, 12) * 0.25,
                             properties={"since": rnd.randint(1990, 2020)}, chunks=[f"c{rnd.randint(0, 9)}"]))
    docs = [Document(id=f"d{i}", title=f"Doc {i % 3}", metadata={"n": i}) for i in range(6)]
    chunks = [Chunk(id=f"c{i}", document_id=rnd.choice([f"d{j}" for j in range(6)] + ["d-missing"]),
                    text=f"chunk {i} " + rnd.choice(NAMES), position=rnd.randint(0, 6),
                    embedding=[rnd.randint(-4, 4) * 0.5 for _ in range(DIM)],
                    entities=rnd.sample(ids + ghosts, rnd.randint(0, 5))) for i in range(40)]
    rnd.shuffle(ents)
    early, late = ents[:20], ents[20:]
    # Not entities with a self-loop: kuzu 0.11.3's DETACH DELETE of a node with a self-loop leaves its
    # neighbours with phantom edges, which breaks the delete path (a storage bug, not a query one).
    looped = {r.source for r in rels if r.source == r.target}
    deleted = rnd.sample([i for i in ids if i not in looped], 4)
    batches: list[UpsertRequest | DeleteRequest] = [
        UpsertRequest(entities=early, relations=rels[:80]),  # many far ends are stubs for now
        UpsertRequest(entities=late, relations=rels[80:], documents=docs, chunks=chunks),
        DeleteRequest(entities=deleted),
    ]
    return Graph.after(batches, ents, rels, docs, chunks, set(deleted))


def _json(value: object) -> str:
    """JSON text as the router and apply store it (sorted keys, compact)."""
    return msgspec.json.encode(value, order="sorted").decode()


# ---------------------------------------------------------------------------------------------------
# Clusters made of real Kuzu databases


def Cluster(root: Path, num_shards: int, graph: Graph) -> KuzuShards:  # reads as the type it builds
    """The graph written into `num_shards` shard databases under `root`."""
    return KuzuShards(num_shards, graph.batches, DIM, EMB, root)


def reference_db(root: Path, g: Graph) -> kuzu.Connection:
    """One database with only what is real, built without the write path. On one thread: with more,
    kuzu 0.11.3 returns a grouped aggregate's rows out of ORDER BY order in about 2% of runs. The
    product is immune: the merge sorts shard rows itself, and aggregate shard queries get no LIMIT."""
    db, conn = open_db(root / "reference.kz", threads=1)
    ents = list(g.entities.values())
    vec = lambda vs: pa.array([np.asarray(v, "<f4").tobytes() for v in vs], pa.binary())  # noqa: E731
    conn.execute("COPY Entity FROM $t", {"t": pa.table({
        "id": [e.id for e in ents], "name": [e.name for e in ents], "type": [e.type for e in ents],
        "description": [e.description for e in ents], "properties": [_json(e.properties) for e in ents],
        "embedding": vec([e.embedding for e in ents]), "stub": [False] * len(ents)})})
    docs = list(g.documents.values())
    conn.execute("COPY Document FROM $t", {"t": pa.table({
        "id": [d.id for d in docs], "title": [d.title for d in docs],
        "metadata": [_json(d.metadata) for d in docs]})})
    chunks = list(g.chunks.values())
    conn.execute("COPY Chunk FROM $t", {"t": pa.table({
        "id": [c.id for c in chunks], "document_id": [c.document_id for c in chunks],
        "text": [c.text for c in chunks], "position": pa.array([c.position for c in chunks], pa.int64()),
        "embedding": vec([c.embedding for c in chunks]), "stub": [False] * len(chunks)})})
    rels = list(g.relations.values())
    conn.execute("COPY RELATES FROM $t", {"t": pa.table({
        "from": [r.source for r in rels], "to": [r.target for r in rels], "type": [r.type for r in rels],
        "weight": pa.array([r.weight for r in rels], pa.float64()),
        "properties": [_json(r.properties) for r in rels],
        "chunks": [_json(r.chunks) for r in rels]})})
    mentions = [(c.id, e) for c in chunks for e in dict.fromkeys(c.entities) if e in g.entities]
    conn.execute("COPY MENTIONS FROM $t", {"t": pa.table({
        "from": [m[0] for m in mentions], "to": [m[1] for m in mentions]})})
    reference_db.keep.append(db)  # type: ignore[attr-defined]
    return conn


reference_db.keep = []  # type: ignore[attr-defined]


class World:
    def __init__(self, graph: Graph, one: Cluster, eight: Cluster, ref: kuzu.Connection) -> None:
        self.graph, self.one, self.eight, self.ref = graph, one, eight, ref

    def __repr__(self) -> str:
        return "World(...)"

    def by_alias(self, cypher: str, width: int) -> list[list[Any]]:
        """The reference's rows with column `c<i>` at position i."""
        names = self.ref.execute(cypher).get_column_names()
        at = [names.index(f"c{i}") for i in range(width)]
        return [[row[i] for i in at] for row in self.reference(cypher)]

    def reference(self, cypher: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        result = self.ref.execute(cypher, params or {})
        return [[to_json_value(v) for v in row] for row in result.get_all()]


@pytest.fixture(scope="module", params=[7, 1234])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp(f"graph{request.param}")
    g = random_graph(request.param)
    (root / "one").mkdir()
    (root / "eight").mkdir()
    w = World(g, Cluster(root / "one", 1, g), Cluster(root / "eight", 8, g), reference_db(root, g))
    yield w
    w.one.close()
    w.eight.close()


def without_embeddings(rows: list[list[Any]]) -> list[list[Any]]:
    """The reference's whole nodes as Torua returns them when the query does not name the embedding."""
    def strip(v: Any) -> Any:
        if isinstance(v, list):
            return [strip(x) for x in v]
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if not ("_label" in v and k == "embedding")}
        return v
    return [strip(r) for r in rows]


def _canon(v: Any) -> Any:
    if isinstance(v, list):
        return sorted((_canon(x) for x in v), key=repr)
    return v


def normalised(rows: list[list[Any]], collect_cols: tuple[int, ...] = ()) -> list[list[Any]]:
    """Lists in `collect_cols` sorted; rows sorted: for comparing results without a defined order."""
    fixed = [[_canon(v) if i in collect_cols else v for i, v in enumerate(r)] for r in rows]
    return sorted(fixed, key=repr)


# ---------------------------------------------------------------------------------------------------
# Sharding invariance and agreement with the reference database

# (query, reference query or None for the same text, how to compare: "exact" order, "set", or
# "set+collect:<cols>")
QUERIES: list[tuple[str, str | None, str]] = [
    # one node
    ("MATCH (n:Entity) RETURN n.id, n.name, n.type", None, "set"),
    ("MATCH (n:Entity) WHERE n.type = 'person' RETURN n.name ORDER BY n.name", None, "exact"),
    ("MATCH (n:Entity) RETURN n.name ORDER BY n.name DESC SKIP 3 LIMIT 7", None, "exact"),
    ("MATCH (n:Entity) RETURN n.name, n.id ORDER BY n.name LIMIT 5",
     "MATCH (n:Entity) RETURN n.name, n.id ORDER BY n.name, n.id LIMIT 5", "exact"),
    ("MATCH (n:Entity) RETURN n.name AS nm, n.id ORDER BY nm DESC SKIP 2 LIMIT 6",
     "MATCH (n:Entity) RETURN n.name AS nm, n.id ORDER BY nm DESC, n.id SKIP 2 LIMIT 6", "exact"),
    ("MATCH (n:Entity) RETURN n.id ORDER BY size(n.name) DESC, n.description LIMIT 9",
     "MATCH (n:Entity) RETURN n.id ORDER BY size(n.name) DESC, n.description, n.id LIMIT 9", "exact"),
    ("MATCH (n:Entity) RETURN n.id LIMIT 4", "MATCH (n:Entity) RETURN n.id ORDER BY n.id LIMIT 4", "exact"),
    ("MATCH (n:Entity) RETURN DISTINCT n.type ORDER BY n.type", None, "exact"),
    ("MATCH (n:Entity) RETURN DISTINCT n.name, n.type", None, "set"),
    ("MATCH (n:Entity) RETURN DISTINCT n.name ORDER BY n.name DESC LIMIT 3", None, "exact"),
    ("MATCH (n:Entity) RETURN count(*), count(n.description), min(n.name), max(n.name), sum(size(n.name)),"
     " avg(size(n.name)), count(DISTINCT n.name)", None, "exact"),
    ("MATCH (n:Entity) WHERE n.name = 'nobody' RETURN count(*), sum(size(n.name)), avg(size(n.name)),"
     " min(n.name), collect(n.name), count(DISTINCT n.name), collect(DISTINCT n.id)", None, "exact"),
    ("MATCH (n:Entity) RETURN n.type, count(*) AS c, collect(n.name) AS names ORDER BY n.type",
     None, "set+collect:2"),
    ("MATCH (n:Entity) RETURN n.type AS t, count(DISTINCT n.name) AS k, collect(DISTINCT n.name) AS names,"
     " sum(DISTINCT size(n.name)) AS s, avg(DISTINCT size(n.name)) AS a ORDER BY k DESC, t", None, "set+collect:2"),
    ("MATCH (n:Entity) RETURN n.name, count(*) AS c ORDER BY c DESC, n.name LIMIT 4", None, "exact"),
    ("MATCH (n:Entity) RETURN DISTINCT n.type, count(*) ORDER BY n.type", None, "exact"),
    ("MATCH (n:Entity {type: 'place'}) RETURN n.id, n.properties ORDER BY n.id", None, "exact"),
    ("MATCH (n:Entity) WHERE n.properties CONTAINS '\"tag\":\"x\"' AND n.name STARTS WITH 'B'"
     " RETURN n.id", None, "set"),
    ("MATCH (n:Entity) RETURN n.id, n.embedding, octet_length(n.embedding) ORDER BY n.id LIMIT 3", None, "exact"),
    ("MATCH (n:Entity) RETURN n ORDER BY n.id LIMIT 3", None, "exact"),
    ("MATCH (n:Entity) RETURN sum(size(n.description)) AS s, avg(size(n.type)), min(n.description),"
     " max(n.id), count(DISTINCT n.embedding)", None, "exact"),
    ("MATCH (c:Chunk) RETURN c.document_id, count(*), sum(c.position), max(c.text) ORDER BY c.document_id",
     None, "exact"),
    ("MATCH (c:Chunk) WHERE c.position >= 3 RETURN c.id, c.text", None, "set"),
    ("MATCH (d:Document) RETURN d.id, d.title, d.metadata ORDER BY d.title DESC, d.id", None, "exact"),
    ("MATCH (d:Document) RETURN d.title, count(*) ORDER BY d.title", None, "exact"),
    # one relationship, far end through its id only (pushed down, stubs resolved)
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, r.type, b.id, r.weight", None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN count(*)", None, "exact"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE r.weight >= 1 RETURN r.type, count(*), sum(r.weight),"
     " avg(r.weight), min(r.weight), max(r.weight) ORDER BY r.type", None, "exact"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, count(DISTINCT b.id) AS k ORDER BY k DESC, a.name",
     None, "exact"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.name", None, "set"),  # anchored on b
    ("MATCH (a:Entity)<-[r:RELATES]-(b:Entity) WHERE a.type = 'person' RETURN a.id, b.id", None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]-(b:Entity) RETURN a.id, b.id, r.type", None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]-(b:Entity) RETURN count(*), count(DISTINCT a.id)", None, "exact"),
    ("MATCH (a:Entity {type: 'person'})-[r:RELATES {type: 'knows'}]->(b:Entity) RETURN a.id, b.id",
     None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE a.id = b.id RETURN a.id, r.type", None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.id ORDER BY r.weight DESC LIMIT 7",
     "MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.id ORDER BY r.weight DESC, a.id, r.type, b.id"
     " LIMIT 7", "exact"),
    # far end needed in full (gathered, resolved, finished in a temporary database)
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, b.name, r.weight", None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) WHERE b.type = 'person' AND a.type <> 'thing'"
     " RETURN a.id, b.id", None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.name ORDER BY b.name DESC, a.id LIMIT 10",
     "MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.name ORDER BY b.name DESC, a.id, r.type, b.id"
     " LIMIT 10", "exact"),
    ("MATCH (a:Entity)-[r:RELATES]-(b:Entity) RETURN a.name, b.name, r.type", None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]-(b:Entity) WHERE a.type = b.type OR r.weight > 2"
     " RETURN a.type, count(*) AS c, collect(b.name) AS names ORDER BY a.type", None, "set+collect:2"),
    ("MATCH (a:Entity)<-[r:RELATES]-(b:Entity) WHERE a.type = 'place' RETURN b.name, count(*) AS c"
     " ORDER BY c DESC, b.name", None, "exact"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity {type: 'place'}) RETURN a.name, b.id", None, "set"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN b ORDER BY b.id, a.id LIMIT 4", None, "exact"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN count(DISTINCT b), count(DISTINCT a.type + b.type)",
     None, "exact"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.embedding ORDER BY a.id, r.type, b.id LIMIT 5",
     None, "exact"),
    ("MATCH (c:Chunk)-[m:MENTIONS]->(e:Entity) RETURN c, e.embedding ORDER BY c.id, e.id LIMIT 5", None, "exact"),
    # mentions
    ("MATCH (c:Chunk)-[m:MENTIONS]->(e:Entity) RETURN c.id, e.id", None, "set"),
    ("MATCH (c:Chunk)-[m:MENTIONS]->(e:Entity) RETURN e.name, count(*) AS k ORDER BY k DESC, e.name", None, "exact"),
    ("MATCH (c:Chunk)-[:MENTIONS]->(e:Entity) RETURN c.document_id, count(*) ORDER BY c.document_id", None, "exact"),
    ("MATCH (e:Entity)<-[:MENTIONS]-(c:Chunk) WHERE c.position > 2 RETURN e.name, c.text", None, "set"),
    ("MATCH (c:Chunk)-[:MENTIONS]-(e:Entity) RETURN c.document_id, e.type, count(*)", None, "set"),
    ("MATCH (e:Entity)-[:MENTIONS]-(c:Chunk) RETURN count(*), count(DISTINCT e.id), count(DISTINCT c.id)",
     None, "exact"),
    # Undirected, a->b and b->a of one type bind the same ends and differ only in their content: the
    # order must not depend on which shard returned which (found by the random queries below).
    ("MATCH (a:Entity)-[r:RELATES]-(b:Entity) WHERE a.name < 'F' RETURN r.weight", None, "set"),
]


def _compare(how: str, got: list[list[Any]], want: list[list[Any]]) -> None:
    if how == "exact":
        assert got == want
    else:
        cols = tuple(int(c) for c in how.split(":")[1].split(",")) if ":" in how else ()
        assert normalised(got, cols) == normalised(want, cols)


@pytest.mark.parametrize("cypher,ref,how", QUERIES, ids=[q[0][:70] for q in QUERIES])
async def test_same_answer_on_1_and_8_shards_and_the_reference(world: World, cypher: str, ref: str | None,
                                                             how: str) -> None:
    one = await world.one.query(cypher)
    eight = await world.eight.query(cypher)
    assert not one.partial and not eight.partial
    assert eight.columns == one.columns
    assert eight.rows == one.rows  # identical, order included
    want = world.reference(ref or cypher)
    if "embedding" not in cypher:  # whole nodes come without it unless it is named
        want = without_embeddings(want)
    assert one.columns == list(world.ref.execute(ref or cypher).get_column_names())
    _compare(how, one.rows, want)


async def test_some_answers_are_not_trivially_empty(world: World) -> None:
    g = world.graph
    rels = await world.eight.query("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN count(*)")
    assert rels.rows == [[len(g.relations)]]
    assert 50 < len(g.relations) < 160  # some point at never-created or deleted entities
    mentions = await world.eight.query("MATCH (c:Chunk)-[:MENTIONS]->(e:Entity) RETURN count(*)")
    want = sum(1 for c in g.chunks.values() for e in set(c.entities) if e in g.entities)
    assert mentions.rows == [[want]] and want > 10


async def test_parameters(world: World) -> None:
    q = "MATCH (n:Entity) WHERE n.type = $t RETURN n.id ORDER BY n.id SKIP $s LIMIT $l"
    params = {"t": "person", "s": 1, "l": 3, "unused": 1}
    got = await world.eight.query(q, params)
    want = [[e.id] for e in sorted(world.graph.entities.values(), key=lambda e: e.id) if e.type == "person"]
    assert got.rows == want[1:4]
    assert (await world.one.query(q, params)).rows == got.rows


async def test_pushdown_sends_limit_to_shards(world: World) -> None:
    world.eight.calls.clear()
    await world.eight.query("MATCH (n:Entity) RETURN n.name ORDER BY n.name SKIP 2 LIMIT 3")
    assert world.eight.calls and all(q.endswith("LIMIT 5") for _s, q in world.eight.calls)


async def test_independent_reference_for_a_grouped_far_end_query(world: World) -> None:
    """Out-degree by the target's type, computed in Python from the model of the graph."""
    g = world.graph
    want: dict[tuple[str, str], list[float]] = {}
    for r in g.relations.values():
        want.setdefault((g.entities[r.source].name, g.entities[r.target].type), []).append(r.weight)
    got = await world.eight.query(
        "MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, b.type, count(*), sum(r.weight), max(r.weight)")
    assert sorted(map(tuple, got.rows)) == sorted(
        (n, t, len(ws), sum(ws), max(ws)) for (n, t), ws in want.items())


async def test_plain_aggregates_after_distinct_ones_are_right(world: World) -> None:
    """kuzu 0.11.3 itself returns NULL here (a plain aggregate after a DISTINCT one, grouped); the
    planner orders shard columns so that it does not."""
    got = await world.eight.query(
        "MATCH (n:Entity) RETURN n.type AS t, count(DISTINCT n.name) AS k, sum(size(n.name)) AS s, count(*) AS c")
    want: dict[str, list[str]] = {}
    for e in world.graph.entities.values():
        want.setdefault(e.type, []).append(e.name)
    assert sorted(map(tuple, got.rows)) == sorted(
        (t, len(set(ns)), sum(len(n) for n in ns), len(ns)) for t, ns in want.items())
    assert (await world.one.query(
        "MATCH (n:Entity) RETURN n.type AS t, count(DISTINCT n.name) AS k, sum(size(n.name)) AS s,"
        " count(*) AS c")).rows == got.rows


# ---------------------------------------------------------------------------------------------------
# Partial answers


@pytest.fixture()
def small(tmp_path: Path) -> Iterator[Cluster]:
    g = random_graph(99)
    c = Cluster(tmp_path, 8, g)
    yield c
    c.close()


async def test_a_dead_shard_makes_the_answer_partial(small: Cluster) -> None:
    full = await small.query("MATCH (n:Entity) RETURN n.id")
    small.down = {3}
    got = await small.query("MATCH (n:Entity) RETURN n.id")
    assert got.partial
    assert got.shards["3"].ok is False and "shard 3" in (got.shards["3"].error or "")
    assert all(st.ok for s, st in got.shards.items() if s != "3")
    lost = {r[0] for r in full.rows} - {r[0] for r in got.rows}
    assert lost and all(shard_for(i, 8) == 3 for i in lost)
    count = await small.query("MATCH (n:Entity) RETURN count(*)")
    assert count.partial and count.rows == [[len(got.rows)]]


async def test_a_dead_shard_during_a_relationship_query(small: Cluster) -> None:
    small.down = {5}
    for q in ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN count(*)",
              "MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, b.name"):
        got = await small.query(q)
        assert got.partial and not got.shards["5"].ok


async def test_a_dead_owner_of_far_ends_is_partial_not_wrong(small: Cluster) -> None:
    """Shard 2 dies after the bindings were gathered: far ends it owns cannot be confirmed, so
    their bindings are left out and shard 2 is reported, never a wrong row."""
    for q in ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, b.name",  # far_end
              "MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.name, b.id"):  # rel
        full = await small.query(q)
        calls = 0

        async def dies_late(shard: int, query: str, params: dict[str, Any]) -> ShardRows:
            nonlocal calls
            if shard == 2 and calls > 0:
                raise Unavailable("shard 2 went away")
            calls += shard == 2
            return await small.run_on_shard(shard, query, params)

        got = await run_query(q, {}, 8, dies_late)
        assert got.partial and not got.shards["2"].ok
        assert set(map(tuple, got.rows)) <= set(map(tuple, full.rows))
        assert len(got.rows) < len(full.rows)


# ---------------------------------------------------------------------------------------------------
# Refusals


REFUSED = [
    ("MATCH (a:Entity)-[:RELATES*2..]->(b:Entity) RETURN b.id", "upper bound"),
    ("MATCH (a:Entity)-[:RELATES]->(b:Entity)-[:RELATES]->(c:Entity) RETURN id(c)", "internal ids"),
    ("MATCH (a:Entity), (b:Entity) RETURN a.id, b.id", "several patterns"),
    ("MATCH (a:Entity) MATCH (b:Entity) RETURN a.id", "several patterns"),
    ("MATCH (a:Entity) OPTIONAL MATCH (b:Entity) RETURN a.id", "cartesian product"),
    ("MATCH (a:Entity) WITH a.id AS x MATCH (a)-->(b) RETURN b.id", "dropped by a WITH"),
    ("UNWIND [1, 2] AS x RETURN x", "UNWIND"),
    ("MATCH (a:Entity) RETURN a.id UNION MATCH (b:Entity) RETURN b.id", "UNION"),
    ("MATCH (a:Entity) WHERE EXISTS { MATCH (a)-[:RELATES]->(:Entity) } RETURN a.id", "subqueries"),
    ("MATCH (a:Entity) WHERE (a)-[:RELATES]->(:Entity) RETURN a.id", "pattern expressions"),
    ("MATCH (a:Entity) RETURN COUNT { MATCH (a)-->(:Entity) }", "subqueries"),
    ("MATCH p = (a:Entity)-[:RELATES]->(b:Entity)-[:RELATES]->(c:Entity) RETURN p", "cannot be returned"),
    ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN r", "whole relationship"),
    ("MATCH (a:Entity)-[r]->(b:Entity)-[s]->(c:Entity) RETURN r", "cannot be returned"),
    ("MATCH (a:Document)-->(b) RETURN a.id", "no relationship table fits"),
    ("MATCH (n) RETURN n.id", "node label"),
    ("MATCH (n:Entity:Chunk) RETURN n.id", "only one label"),
    ("MATCH (n:Entity) RETURN id(n)", "internal ids"),
    ("MATCH (n:Entity) RETURN count(*) + 1", "inside an expression"),
    ("MATCH (n:Entity) RETURN n.type, count(*) ORDER BY n.type + 'x'", "ORDER BY must name"),
    ("MATCH (n:Entity) RETURN *", "RETURN *"),
    ("MATCH (n:KV) RETURN n.value", "internal"),
    ("MATCH (n:Entity) SET n.name = 'x' RETURN n.id", "SET is not allowed"),
    ("MATCH (n:Entity) RETURN n.id; MATCH (n:Entity) RETURN n.id", "multiple statements"),
    ("MATCH (n:Entity) WHERE n.id = $missing RETURN n.id", "$missing"),
    ("MATCH (n:Entity) RETURN n.nope", "query failed"),  # Kuzu's own error, as a 400
    ("CALL show_tables() RETURN *", "CALL is not allowed"),
]


@pytest.mark.parametrize("cypher,why", REFUSED, ids=[r[0][:60] for r in REFUSED])
async def test_refused_with_a_reason(small: Cluster, cypher: str, why: str) -> None:
    small.calls.clear()
    with pytest.raises(BadRequest) as err:
        await small.query(cypher)
    assert why.lower() in err.value.description.lower()


async def test_refusals_never_reach_a_shard(small: Cluster) -> None:
    before = [execute_on_shard(small.conn(s), "MATCH (n:Entity) RETURN count(*)", {}).rows for s in range(8)]
    small.calls.clear()
    for q in ("MATCH (n:Entity) DETACH DELETE n", "MATCH (n:Entity) SET n.name = 'x' RETURN n",
              "CREATE (:Entity {id: 'new'})", "MATCH (n:Entity) RETURN n.id; DROP TABLE Entity",
              "COPY Entity FROM 'x.csv'", "LOAD FROM 'x.csv' RETURN *", "CALL drop_fts_index('Entity', 'x')"):
        with pytest.raises(BadRequest):
            await small.query(q)
    assert small.calls == []
    after = [execute_on_shard(small.conn(s), "MATCH (n:Entity) RETURN count(*)", {}).rows for s in range(8)]
    assert after == before


def test_the_shard_side_runs_in_a_read_only_transaction(tmp_path: Path) -> None:
    from torua_node.shard import query as query_mod

    db, conn = open_db(tmp_path / "x.kz")
    try:
        with pytest.raises(BadRequest, match="read-only transaction"):
            query_mod._read_only(conn, lambda: query_mod._to_rows(conn.execute("CREATE (:Entity {id: 'x'})")))
        assert execute_on_shard(conn, "MATCH (n:Entity) RETURN count(*)", {}).rows == [[0]]
        with pytest.raises(BadRequest, match="CREATE"):
            execute_on_shard(conn, "CREATE (:Entity {id: 'x'})", {})
    finally:
        conn.close()
        db.close()


# ---------------------------------------------------------------------------------------------------
# Pieces


async def test_whole_nodes_come_without_the_embedding_unless_it_is_named(world: World) -> None:
    for q, v in (("MATCH (n:Entity) RETURN n.id, n, collect(n) AS ns, {x: n} AS m ORDER BY n.id LIMIT 3", "n"),  # node
                 ("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN b ORDER BY b.id, a.id LIMIT 3", "b"),  # far end
                 ("MATCH (a:Entity)-[:RELATES]->(b:Entity)-[:RELATES]->(c) RETURN b ORDER BY b.id LIMIT 3", "b")):
        got = await world.eight.query(q)
        assert got.rows and all("embedding" not in str(r) for r in got.rows), q
        assert got.rows == without_embeddings(world.reference(q)), q  # Kuzu's node value less the embedding
        assert all("'embedding'" in str(r) for r in world.reference(q))
        named = q.replace(" ORDER BY", f", octet_length({v}.embedding) AS sz ORDER BY")
        got = await world.eight.query(named)
        assert all("'embedding'" in str(r) for r in got.rows), q
        assert got.rows == world.reference(named)
    users = await world.eight.query("MATCH (n:Entity) RETURN {_label: 'x', embedding: 1} AS m LIMIT 1")
    assert users.rows == [[{"_label": "x", "embedding": 1}]]  # a map of the user's is not a node


def test_far_ends_resolve_on_their_owning_shard(small: Cluster) -> None:
    """A chunk lives on its document's shard, not on shard(chunk id): resolution asks the owner."""
    from torua_node.cypher.planner import resolve_query

    ids = ["c1", "c2", "c3", "nope"]
    for many in (False, True):  # a few ids are probed one by one, many in one statement
        found = {}
        for s in range(8):
            query, params = resolve_query("Chunk", ("id", "document_id"), ids + [f"absent{i}" for i in range(9 * many)])
            assert ("UNWIND" in query) is many
            for cid, doc in execute_on_shard(small.conn(s), query, params).rows:
                assert shard_for(doc, 8) == s
                found[cid] = doc
        assert set(found) == {"c1", "c2", "c3"}


def test_gather_columns_match_the_shard_schema(tmp_path: Path) -> None:
    db, conn = open_db(tmp_path / "x.kz")
    try:
        for table, cols in TABLE_COLUMNS.items():
            stored = tuple(r[1] for r in conn.execute(f"CALL table_info('{table}') RETURN *").get_all())
            assert stored == cols, table
    finally:
        conn.close()
        db.close()


def test_to_json_value_strips_storage_detail_and_converts_types(tmp_path: Path) -> None:
    db, conn = open_db(tmp_path / "x.kz")
    try:
        conn.execute("CREATE (:Entity {id: 'a', name: 'A', stub: false})")
        node = execute_on_shard(conn, "MATCH (n:Entity) RETURN n", {}).rows[0][0]
        assert node["id"] == "a" and node["_label"] == "Entity" and "_id" not in node and "stub" not in node
        row = execute_on_shard(conn, "MATCH (n:Entity) RETURN sum(1), date('2020-01-02'), {x: 1}", {}).rows[0]
        assert row == [1, "2020-01-02", {"x": 1}] and isinstance(row[0], int)
    finally:
        conn.close()
        db.close()


def test_merge_orders_nulls_like_kuzu_and_breaks_ties_canonically() -> None:
    spec = plan_query("MATCH (n:Entity) RETURN n.name ORDER BY n.name DESC", {}).merge
    parts = [ShardRows(["n.name", "__qt0"], ["STRING", "STRING"], [["b", "2"], [None, "9"]]),
             ShardRows(["n.name", "__qt0"], ["STRING", "STRING"], [["a", "1"], ["b", "0"]])]
    assert merge_rows(spec, parts) == [[None], ["b"], ["b"], ["a"]]
    spec = plan_query("MATCH (n:Entity) RETURN n.name ORDER BY n.name", {}).merge
    assert merge_rows(spec, parts) == [["a"], ["b"], ["b"], [None]]


def test_order_by_a_type_kuzu_cannot_order_is_refused() -> None:
    spec = plan_query("MATCH (n:Entity) RETURN n.id AS i, collect(n.name) AS c ORDER BY c", {}).merge
    with pytest.raises(BadRequest, match="STRING"):
        merge_rows(spec, [ShardRows(["i", "c"], ["STRING", "STRING[]"], [["a", ["x"]]])])


# ---------------------------------------------------------------------------------------------------
# Random queries from the supported grammar


@dataclass(frozen=True)
class Shape:
    pattern: str
    atoms: tuple[str, ...]  # WHERE atoms
    values: tuple[str, ...]  # comparable scalar expressions
    numbers: tuple[str, ...]  # numeric expressions


_E = ("{v}.type = 'person'", "{v}.name < 'F'", "{v}.description = ''", "{v}.name STARTS WITH 'B'",
      "NOT {v}.type = 'place'", "{v}.properties CONTAINS '\"tag\":\"x\"'")
_EV = ("{v}.id", "{v}.name", "{v}.type", "{v}.description")


def _ent(v: str) -> tuple[list[str], list[str], list[str]]:
    return [a.format(v=v) for a in _E], [x.format(v=v) for x in _EV], [f"size({v}.name)"]


def _shapes() -> list[Shape]:
    shapes = []
    a, av, an = _ent("a")
    b, bv, bn = _ent("b")
    r = ["r.weight >= 1.5", "r.type = 'knows'", "r.weight < 1"]
    for arrow in ("-[r:RELATES]->", "<-[r:RELATES]-", "-[r:RELATES]-"):
        shapes.append(Shape(f"(a:Entity){arrow}(b:Entity)", tuple(a + b + r + ["a.id = b.id", "a.type = b.type"]),
                            tuple(av + bv + ["r.type", "r.weight"]), tuple(an + bn + ["r.weight"])))
        shapes.append(Shape(f"(a:Entity){arrow}(b:Entity)", tuple(a + r + ["b.id < 'e3'"]),
                            (*av, "b.id", "r.type"), (*an, "r.weight")))  # far end by id only
    n, nv, nn = _ent("n")
    shapes.append(Shape("(n:Entity)", tuple(n), tuple(nv), tuple(nn)))
    c = ["c.position > 2", "c.document_id = 'd1'", "c.text CONTAINS 'Bo'"]
    cv, cn = ["c.id", "c.document_id", "c.position"], ["c.position"]
    shapes.append(Shape("(c:Chunk)", tuple(c), tuple(cv), tuple(cn)))
    e, ev, en = _ent("e")
    for pat in ("(c:Chunk)-[m:MENTIONS]->(e:Entity)", "(e:Entity)<-[m:MENTIONS]-(c:Chunk)",
                "(c:Chunk)-[m:MENTIONS]-(e:Entity)"):
        shapes.append(Shape(pat, tuple(c + e), tuple(cv + ev), tuple(cn + en)))
    return shapes


SHAPES = _shapes()


@dataclass(frozen=True)
class Case:
    cypher: str
    collect: tuple[int, ...]  # columns holding collect() lists
    order: tuple[tuple[int, bool], ...] = ()  # ORDER BY (column, descending)
    skip: int = 0
    limit: int | None = None
    unsliced: str = ""  # the query without SKIP / LIMIT
    safe: str = ""  # the query with DISTINCT aggregates last (kuzu 0.11.3 breaks plain ones after them)


@st.composite
def random_queries(draw: st.DrawFn) -> Case:
    s = draw(st.sampled_from(SHAPES))
    atoms = draw(st.lists(st.sampled_from(s.atoms), max_size=3, unique=True))
    joiner = draw(st.sampled_from([" AND ", " OR "]))
    where = f" WHERE {joiner.join(atoms)}" if atoms else ""
    mode = draw(st.sampled_from(["rows", "distinct", "agg"]))
    collect: tuple[int, ...] = ()
    if mode == "agg":
        keys = draw(st.lists(st.sampled_from(s.values), max_size=2, unique=True))
        aggs = draw(st.lists(st.sampled_from(
            ["count(*)"] + [f"{f}({x})" for x in s.values for f in ("count", "min", "max")]
            + [f"count(DISTINCT {x})" for x in s.values] + [f"collect(DISTINCT {x})" for x in s.values]
            + [f"collect({x})" for x in s.values]
            + [f"{f}({x})" for x in s.numbers for f in ("sum", "avg")]
            + [f"{f}(DISTINCT {x})" for x in s.numbers for f in ("sum", "avg")]), min_size=1, max_size=3, unique=True))
        items = keys + aggs
        collect = tuple(i for i, it in enumerate(items) if it.startswith("collect("))
    else:
        items = draw(st.lists(st.sampled_from(s.values), min_size=1, max_size=3, unique=True))
    head = f"MATCH {s.pattern}{where} RETURN {'DISTINCT ' if mode == 'distinct' else ''}"
    q = head + ", ".join(f"{it} AS c{i}" for i, it in enumerate(items))
    rank = lambda i: 2 if "DISTINCT" in items[i] else 1 if "(" in items[i] else 0  # noqa: E731
    safe = head + ", ".join(f"{items[i]} AS c{i}" for i in sorted(range(len(items)), key=rank))
    cols = [c for c in draw(st.lists(st.integers(0, len(items) - 1), max_size=2, unique=True))
            if c not in collect]
    if not cols:
        return Case(q, collect, safe=safe)
    order = tuple((c, draw(st.booleans())) for c in cols)
    by = " ORDER BY " + ", ".join(f"c{c}{' DESC' if d else ''}" for c, d in order)
    q, safe = q + by, safe + by
    if not draw(st.booleans()):
        return Case(q, collect, order, unsliced=safe, safe=safe)
    skip, limit = draw(st.integers(0, 3)), draw(st.integers(0, 6))
    return Case(f"{q} SKIP {skip} LIMIT {limit}", collect, order, skip, limit, safe, safe)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=random_queries())
def test_random_queries_agree_across_shard_counts_and_with_the_reference(world: World, case: Case) -> None:
    import asyncio

    one = asyncio.run(world.one.query(case.cypher))
    eight = asyncio.run(world.eight.query(case.cypher))
    assert (eight.columns, eight.rows) == (one.columns, one.rows)
    if case.limit is None:
        want = world.by_alias(case.safe, len(one.columns))
        assert normalised(one.rows, case.collect) == normalised(want, case.collect)
    # Rows tied on the ORDER BY keys may come in any order from one database, but the sequence of
    # keys is determined. (Kuzu's own SKIP is not trusted: with ties it returns too few rows.)
    if case.order:
        keys = [c for c, _d in case.order]
        want = [[r[c] for c in keys] for r in world.by_alias(case.unsliced, len(one.columns))]
        end = None if case.limit is None else case.skip + case.limit
        assert [[r[c] for c in keys] for r in one.rows] == want[case.skip:end]
