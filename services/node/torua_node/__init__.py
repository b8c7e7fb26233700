"""The Torua node: shard replicas in Kuzu, the write-ahead-log apply loop and the query router."""

# kuzu 0.11.3 calls importlib.util without importing it; importing it here, before any module of
# this package imports kuzu, fixes that for all of them.
import importlib.util  # noqa: F401
