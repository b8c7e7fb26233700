"""Cypher for `torua.graph.query`, as pure language processing: no I/O, no NATS, no database.

`lexer` (tokens), `guard` (read-only check, the second line of defence on every shard),
`planner` (what each shard runs and how the answers merge, or a 400 that says why not), `chain`
(multi-hop patterns: the frontier exchange's plan and shard queries) and `merge`.
Imports only storage's table declaration.
"""
