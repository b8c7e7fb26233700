"""Is the log still the one this replica applied? The log's identity, checked before applying more.

A replica stores, with `applied_seq`, the identity of the WAL stream it follows (JetStream's
creation time of `TORUA_WAL`) and the fingerprint of the entry at `applied_seq`. The log went
somewhere this replica cannot follow when

- the stream was deleted and created again (another creation time): its sequences start over, and
  the replica would take new entries for ones it already applied, skipping them;
- the stream ends before `applied_seq` (entries the replica applied are gone);
- the stream holds another entry at `applied_seq` than the one the replica applied there (entries
  were lost and the sequence numbers reused, e.g. an unsynced tail lost in an OS crash).

Any of these and the replica stops serving and applying (state `diverged`): its content and the
log no longer describe the same history, and reading or applying on would silently lose or mix up
acknowledged writes. A replica that applied nothing yet simply adopts the stream it finds.

Entries *purged* on purpose are not a lost log (torua.retention): the purge removes a shard's
entries below a floor recorded in KV beforehand, never the entry at or above the position any known
replica or kept snapshot stands at. The checks above still hold after a purge — the stream keeps
its identity and its last sequence, and an entry purged from under `applied_seq` is simply not
compared (`entry` None), while one still there must match. A replica whose position is below the
floor (`behind_purge`) lacks entries it needs: it restores a snapshot (shard/replica.py) rather
than diverging, and never skips them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from torua.retention import log_id_of
from torua.subjects import WAL_STREAM, wal_subject
from torua_node.shard.wal import fingerprint
from torua_node.storage.schema import LogPosition

__all__ = ["LogView", "log_id_of", "log_problem", "behind_purge"]


@dataclass(frozen=True, slots=True)
class LogView:
    """What JetStream says of the stream now."""

    log_id: int  # creation time, microseconds since the epoch
    first_seq: int
    last_seq: int


def _when(log_id: int) -> str:
    return dt.datetime.fromtimestamp(log_id / 1e6, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def log_problem(shard: int, pos: LogPosition, view: LogView, entry: tuple[str, bytes] | None) -> str | None:
    """Why this replica cannot follow the log (None: it can). `entry` is the stream's message at
    `pos.applied_seq` (subject, data), or None when it was not read (unknown, or gone)."""
    if pos.applied_seq == 0:
        return None  # nothing applied: any log is this replica's log
    if pos.log_id is not None and pos.log_id != view.log_id:
        return (f"stream {WAL_STREAM} was created again (at {_when(view.log_id)}); this replica applied"
                f" shard {shard} up to {pos.applied_seq} of the stream created at {_when(pos.log_id)}")
    if view.last_seq < pos.applied_seq:
        return (f"stream {WAL_STREAM} ends at {view.last_seq}, before shard {shard}'s position"
                f" {pos.applied_seq} on this replica: entries it applied are gone from the log")
    if entry is not None and pos.applied_fp is not None:
        subject, data = entry
        if subject != wal_subject(shard) or fingerprint(data) != pos.applied_fp:
            return (f"stream {WAL_STREAM} holds another entry at {pos.applied_seq} ({subject}) than the"
                    f" shard {shard} entry this replica applied there: the log lost entries and reused"
                    " their sequence numbers")
    return None


def behind_purge(applied_seq: int, purged_below: int) -> bool:
    """Whether a replica at `applied_seq` needs entries the purge removed: the shard's entries below
    `purged_below` are gone, and it still needs every one after `applied_seq`."""
    return purged_below > applied_seq + 1
