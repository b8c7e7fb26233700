"""The log's identity: when a replica may follow the stream it finds, and when it must stop."""

from __future__ import annotations

import datetime as dt

from torua.subjects import wal_subject
from torua_node.shard.logcheck import LogView, log_id_of, log_problem
from torua_node.shard.wal import fingerprint
from torua_node.storage.schema import LogPosition

CREATED = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
LOG = log_id_of(CREATED)
ENTRY = b"\x81\xa1x\x01"  # any stored bytes


def test_log_id_is_the_creation_time_in_microseconds() -> None:
    assert LOG == int(CREATED.timestamp()) * 1_000_000 + 123456
    assert log_id_of(CREATED.replace(tzinfo=None)) == LOG  # nats-py may give a naive UTC datetime
    assert log_id_of(CREATED + dt.timedelta(microseconds=1)) == LOG + 1


def test_a_replica_that_applied_nothing_follows_any_log() -> None:
    view = LogView(log_id=LOG + 5, first_seq=1, last_seq=0)
    assert log_problem(3, LogPosition(0, LOG, None), view, None) is None
    assert log_problem(3, LogPosition(0, None, None), view, None) is None


def test_the_same_log_with_the_applied_entry_in_place_is_followed() -> None:
    pos = LogPosition(7, LOG, fingerprint(ENTRY))
    view = LogView(LOG, first_seq=1, last_seq=9)
    assert log_problem(3, pos, view, (wal_subject(3), ENTRY)) is None
    assert log_problem(3, pos, view, None) is None  # the entry was deleted by hand: nothing to compare


def test_a_re_created_stream_is_detected_whatever_it_holds() -> None:
    pos = LogPosition(7, LOG, fingerprint(ENTRY))
    for last in (0, 3, 7, 100):
        problem = log_problem(3, pos, LogView(LOG + 1, 1, last), None)
        assert problem is not None and "created again" in problem and "shard 3" in problem


def test_a_log_ending_before_the_applied_position_is_detected() -> None:
    pos = LogPosition(7, LOG, fingerprint(ENTRY))
    problem = log_problem(3, pos, LogView(LOG, 1, 6), None)
    assert problem is not None and "ends at 6" in problem and "position 7" in problem


def test_another_entry_at_the_applied_position_is_detected() -> None:
    pos = LogPosition(7, LOG, fingerprint(ENTRY))
    view = LogView(LOG, 1, 20)
    other_shard = log_problem(3, pos, view, (wal_subject(4), ENTRY))
    other_bytes = log_problem(3, pos, view, (wal_subject(3), ENTRY + b"!"))
    for problem in (other_shard, other_bytes):
        assert problem is not None and "another entry at 7" in problem


def test_a_database_from_before_identities_is_checked_by_position_only() -> None:
    pos = LogPosition(7, None, None)
    assert log_problem(3, pos, LogView(LOG, 1, 7), (wal_subject(4), b"")) is None
    assert log_problem(3, pos, LogView(LOG, 1, 6), None) is not None


def test_fingerprint_fits_int64_and_tells_entries_apart() -> None:
    values = {fingerprint(bytes([i]) * i) for i in range(200)}
    assert len(values) == 200
    assert all(-(1 << 63) <= v < (1 << 63) for v in values)
