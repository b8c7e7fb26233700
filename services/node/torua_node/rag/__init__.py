"""Search and GraphRAG over the shards, through the router's `ShardClient` and `GraphReads`.

`ranking` and `graphrank` (pure scoring and merging), `search` (vector, BM25, hybrid),
`retrieve` (question -> seeds -> graph expansion -> ranked chunks -> context) and `answer`
(an LLM answer over the retrieved context). Never imports the data API facade.
"""
