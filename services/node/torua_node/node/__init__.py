"""The node process: identity, membership (announce, heartbeats), the shard map, the replicas it
hosts, and its admin API (`torua.node.<id>.*`). The composition root (`torua_node.main`) gives it
the data API to start.
"""
