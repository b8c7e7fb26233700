"""The Torua node: shard replicas in Kuzu, the write-ahead-log apply loop and the query router."""
