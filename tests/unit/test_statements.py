"""statements.run: set-at-a-time and row by row give the same results on real Kuzu."""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
from collections.abc import Iterator

import kuzu
import pyarrow as pa
import pytest

from torua_node.storage.statements import KEYS_PER_ROW, run


@pytest.fixture
def conn() -> Iterator[kuzu.Connection]:
    db = kuzu.Database(":memory:")
    c = kuzu.Connection(db)
    c.execute("CREATE NODE TABLE N(id STRING PRIMARY KEY, data BLOB, n INT64)")
    yield c
    c.close()
    db.close()


# keys=0: the table is small for any rows, so set-at-a-time; a huge table: row by row.
BOTH_WAYS = pytest.mark.parametrize("keys", [0, 10**12], ids=["set-at-a-time", "row-by-row"])


@BOTH_WAYS
def test_blobs_round_trip_every_byte_value(conn: kuzu.Connection, keys: int) -> None:
    data = [bytes(range(256)), b"", b"\\x00", bytes(range(255, -1, -1))]
    rows = pa.table({"u_id": [f"k{i}" for i in range(len(data))], "u_data": pa.array(data, pa.binary()),
                     "u_n": pa.array(range(len(data)), pa.int64())})
    run(conn, "CREATE (:N {id: u_id, data: u_data, n: u_n})", rows, keys)
    got = conn.execute("MATCH (x:N) RETURN x.id, x.data ORDER BY x.id").get_all()
    assert got == [[f"k{i}", d] for i, d in enumerate(data)]


@BOTH_WAYS
def test_results_keep_their_columns_when_nothing_matches(conn: kuzu.Connection, keys: int) -> None:
    conn.execute("CREATE (:N {id: 'a', data: BLOB(''), n: 5})")
    ids = pa.table({"u_id": ["absent", "a", "also-absent"]})
    assert run(conn, "MATCH (x:N {id: u_id}) WHERE x.n > $min RETURN x.id, x.n", ids, keys, {"min": 1}) == [
        ["a"], [5]]
    assert run(conn, "MATCH (x:N {id: u_id}) WHERE x.n > $min RETURN x.id, x.n", ids, keys, {"min": 9}) == [
        [], []]


def test_few_rows_meeting_a_large_table_go_row_by_row(conn: kuzu.Connection) -> None:
    seen: list[str] = []

    class Spy:
        def execute(self, query: str, params: dict) -> kuzu.QueryResult:
            seen.append(query)
            return conn.execute(query, params)

    ids = pa.table({"u_id": ["a", "b"]})
    run(Spy(), "MATCH (x:N {id: u_id}) RETURN x.id", ids, keys=2 * KEYS_PER_ROW)  # type: ignore[arg-type]
    assert seen == ["MATCH (x:N {id: $u_id}) RETURN x.id"] * 2
    seen.clear()
    run(Spy(), "MATCH (x:N {id: u_id}) RETURN x.id", ids, keys=2 * KEYS_PER_ROW - 1)  # type: ignore[arg-type]
    assert seen == ["LOAD FROM $t MATCH (x:N {id: u_id}) RETURN x.id"]
