"""The router: the public data API every node serves in one queue group, and its way to the shards.

`client` (`ShardClient`, the one seam to the shards, with one fan-out and one error policy),
`graph` (entities, edges and k-hop traversal over it), `split` (a write into per-shard log
entries), `cache` (results kept while the shards they read are unchanged) and `api` (the data API
facade: writes, get, kv, neighbors, query). Imports the shard protocol, never a replica.
"""
