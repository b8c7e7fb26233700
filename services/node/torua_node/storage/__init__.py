"""Storage: one embedded Kuzu database per shard replica, and what is kept beside it in memory.

`store` (the one module that knows Kuzu is the engine: a database on its own thread), `tables` (the
one declaration of every table and column) and `schema` (DDL, `applied_seq`), `statements` and
`keyspace`/`presence` (set-at-a-time or key-by-key), `reads` and `chunks` (what shard requests
read), `vectors` and `textindex` (exact vector and BM25 indexes rebuilt at open, fed by apply),
`digest` (a content hash equal on every caught-up replica). Imports nothing else of the node.
"""
