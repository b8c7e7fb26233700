"""A shard replica: the write-ahead log, applying it to the shard's database, and answering reads.

`wal` (the log entry format), `apply` (entries into Kuzu, exactly once, deterministic), `replica`
(open, replay, serve, keep applying), `readindex` (strong reads: the end of the shard's log),
`protocol` (the router–shard requests and replies on `torua.shard.<n>.<op>`) and `api` (their
handlers, in the shard's queue group). Imports storage and cypher, never the router.
"""
