"""Log retention, the pure parts: where a shard's log may be purged, snapshot metadata, checksums,
pruning, which snapshot a replica may restore, and when a replica is behind the purge."""

from __future__ import annotations

from pathlib import Path

import pytest

from torua.retention import SnapshotMeta, object_name, purge_point, to_prune
from torua.wire import Heartbeat, ReplicaStatus
from torua_coordinator.registry import Registry
from torua_coordinator.retention import replica_positions
from torua_node.shard.logcheck import behind_purge
from torua_node.shard.snapshot import FORMAT, SnapshotCorrupt, file_sha256, restore_candidates, verify
from torua_node.storage.schema import SCHEMA_VERSION

LOG = 1_700_000_000_000_000


def meta(shard: int, seq: int, log_id: int = LOG, **kw: object) -> SnapshotMeta:
    fields: dict[str, object] = dict(shard=shard, seq=seq, log_id=log_id, sha256="ab" * 32, size=10,
                                     schema=SCHEMA_VERSION, format=FORMAT)
    fields.update(kw)
    return SnapshotMeta(**fields)  # type: ignore[arg-type]


# --- purge_point ------------------------------------------------------------------------------


def test_purges_below_the_oldest_snapshot_and_every_replica() -> None:
    assert purge_point([500, 900], [1000, 950], margin=0, purged_below=1) == 500
    assert purge_point([900], [1000, 700], margin=0, purged_below=1) == 700  # a replica behind the snapshot
    assert purge_point([900], [1000, 950], margin=100, purged_below=1) == 800


def test_keeps_the_entry_at_the_needed_position() -> None:
    # JetStream keeps `seq` and above: the entry at the snapshot's position stays for identity checks.
    assert purge_point([42], [42, 42], margin=0, purged_below=1) == 42


def test_no_purge_without_a_snapshot() -> None:
    assert purge_point([], [1000, 1000], margin=0, purged_below=1) is None


def test_no_purge_while_any_position_is_unknown() -> None:
    assert purge_point([900], [1000, None], margin=0, purged_below=1) is None
    assert purge_point([900], [], margin=0, purged_below=1) is None


def test_no_purge_that_does_not_raise_the_floor() -> None:
    assert purge_point([900], [1000], margin=0, purged_below=900) is None
    assert purge_point([900], [1000], margin=0, purged_below=950) is None
    assert purge_point([900], [1000], margin=899, purged_below=1) is None  # below 1 is nothing
    assert purge_point([900], [1000], margin=0, purged_below=899) == 900


def test_a_replica_at_zero_blocks_the_purge() -> None:
    assert purge_point([900], [1000, 0], margin=0, purged_below=1) is None


# --- who counts ---------------------------------------------------------------------------------


def _registry(**replicas: list[ReplicaStatus]) -> Registry:
    reg = Registry(node_timeout=5.0, reassign_delay=10.0)
    for node, statuses in replicas.items():
        reg.heartbeat(Heartbeat(node_id=node, incarnation=1, seq=1, version="x", uptime_s=1.0, replicas=statuses), 0.0, 0.0)
    return reg


def test_replica_positions_from_heartbeats() -> None:
    reg = _registry(
        a=[ReplicaStatus(shard=3, state="active", applied_seq=100)],
        b=[ReplicaStatus(shard=3, state="recovering", applied_seq=40)],
        c=[ReplicaStatus(shard=3, state="opening")],
        d=[ReplicaStatus(shard=3, state="diverged", applied_seq=5)],
        e=[],
    )
    assert replica_positions(["a", "b"], 3, reg) == [100, 40]
    assert replica_positions(["a", "c"], 3, reg) == [100, None]  # opening: position not known yet
    assert replica_positions(["a", "d"], 3, reg) == [100]  # diverged: rebuilt from a snapshot anyway
    assert replica_positions(["a", "e"], 3, reg) == [100, None]  # assigned, not reported yet
    assert replica_positions(["a", "zz"], 3, reg) == [100, None]  # unknown node


def test_a_silent_node_makes_its_position_unknown() -> None:
    reg = _registry(a=[ReplicaStatus(shard=0, state="active", applied_seq=100)])
    reg.sweep(10.0)  # past the node timeout: unhealthy, its last report no longer vouched for
    assert replica_positions(["a"], 0, reg) == [None]


# --- snapshot metadata, checksum, pruning, choice -------------------------------------------------


def test_metadata_round_trips_through_headers() -> None:
    m = meta(7, 12345)
    headers = m.headers()
    assert all(isinstance(v, list) and isinstance(v[0], str) for v in headers.values())
    assert SnapshotMeta.from_headers(headers) == m  # type: ignore[arg-type]
    flat = {k: v[0] for k, v in headers.items()}
    assert SnapshotMeta.from_headers(flat) == m  # type: ignore[arg-type]
    assert m.name == object_name(7, 12345) == "shard-0007/00000000000000012345"


@pytest.mark.parametrize("headers", [None, {}, {"Torua-Shard": ["1"]}, {**{k: v for k, v in meta(1, 2).headers().items()}, "Torua-Seq": ["x"]}])
def test_foreign_or_damaged_headers_are_not_snapshots(headers: dict[str, object] | None) -> None:
    assert SnapshotMeta.from_headers(headers) is None


def test_checksum_verification(tmp_path: Path) -> None:
    f = tmp_path / "graph.kuzu"
    f.write_bytes(b"kuzu" * 1000)
    good = meta(0, 1, sha256=file_sha256(f), size=4000)
    verify(f, good)
    f.write_bytes(b"kuzv" + b"kuzu" * 999)  # same size, one byte differs
    with pytest.raises(SnapshotCorrupt, match="SHA-256"):
        verify(f, good)
    f.write_bytes(b"kuzu")
    with pytest.raises(SnapshotCorrupt, match="bytes"):
        verify(f, good)


def test_pruning_keeps_the_newest_per_shard() -> None:
    metas = [meta(0, 10), meta(0, 30), meta(0, 20), meta(1, 5), meta(2, 7), meta(2, 9)]
    assert [(m.shard, m.seq) for m in to_prune(metas, 2)] == [(0, 10)]
    assert [(m.shard, m.seq) for m in to_prune(metas, 1)] == [(0, 10), (0, 20), (2, 7)]
    with pytest.raises(ValueError):
        to_prune(metas, 0)


def test_pruning_counts_each_log_apart() -> None:
    # After the stream is re-created, the old log's snapshots do not count as the new log's.
    metas = [meta(0, 10, log_id=LOG), meta(0, 20, log_id=LOG), meta(0, 3, log_id=LOG + 1)]
    assert [(m.seq, m.log_id) for m in to_prune(metas, 1)] == [(10, LOG)]


def test_restore_candidates_are_of_this_shard_log_schema_and_format_newest_first() -> None:
    metas = [meta(0, 10), meta(0, 30), meta(1, 50), meta(0, 40, log_id=LOG + 1), meta(0, 60, schema=SCHEMA_VERSION - 1),
             meta(0, 70, format="parquet"), meta(0, 20)]
    assert [m.seq for m in restore_candidates(metas, 0, LOG)] == [30, 20, 10]
    assert restore_candidates(metas, 5, LOG) == []


def test_behind_the_purge() -> None:
    # Entries below 100 are gone: a replica at 99 needs 100 onward (there), one at 98 needs 99 (gone).
    assert not behind_purge(99, 100)
    assert not behind_purge(500, 100)
    assert behind_purge(98, 100)
    assert behind_purge(0, 2)
    assert not behind_purge(0, 1)
