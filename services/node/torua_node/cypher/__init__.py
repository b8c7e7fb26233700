"""Cypher for `torua.graph.query`, as pure language processing: no I/O, no NATS, no database.

`lexer` (tokens), `guard` (read-only check, the second line of defence on every shard) and
`planner` (what each shard runs and how the answers merge, or a 400 that says why not).
Imports only storage's table declaration.
"""
