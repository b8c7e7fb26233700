"""The Torua coordinator: membership, placement and the shard map (not on the data path)."""
