"""`torua node`: the composition root. Settings are read once here and passed down; this is the one
place that wires the node's components together:

- `NatsShardClient` (router/client.py): the seam to the shards, over the node's NATS connection;
  every request to a shard the node serves (point reads, every fan-out round; not `graph.query`'s
  parts) is answered in-process by its replica's endpoint handler (`LocalReads`, node/replicas.py,
  given by the Node), the others over NATS;
- `ClusterEmbedder`: the node's embedder settings at the shard map's dimension;
- `GraphReads` (router/graph.py) over the client;
- `DataApi` (router/api.py: writes, get, kv, neighbors, query) over the client, graph reads and
  embedder; `Search` and `Retriever` (rag/) over the same; `Answerer` over the retriever and the
  LLM settings;
- their `torua-api` endpoints, and the result cache that follows the shards' applied positions.

The Node process (node/process.py) connects to NATS, follows the shard map and hosts replicas; it
starts the data API with `start_data_api`, given to it here.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import Callable
from functools import partial

from nats.aio.client import Client as NATS

from torua import collector, eventloop, subjects
from torua.endpoints import Endpoint
from torua.errors import ToruaError
from torua.logs import bind, setup_logging
from torua.metrics import metrics
from torua.model import (
    AnswerRequest,
    DeleteRequest,
    GetRequest,
    KVDeleteRequest,
    KVGetRequest,
    KVPutRequest,
    NeighborsRequest,
    QueryRequest,
    RetrieveRequest,
    TextSearchRequest,
    UpsertRequest,
    VectorSearchRequest,
)
from torua.settings import load_settings
from torua.wire import ShardMap
from torua_node.node.process import Node
from torua_node.rag.answer import Answerer
from torua_node.rag.retrieve import Retriever
from torua_node.rag.search import Search
from torua_node.router.api import DataApi, DataService, LocalShards, follow_applied, start_data_service
from torua_node.router.backpressure import ApplyLag
from torua_node.router.cache import ResultCache
from torua_node.router.client import ClusterEmbedder, NatsShardClient
from torua_node.router.graph import GraphReads
from torua_node.router.query import Queries
from torua_node.settings import NodeSettings, QueryLimits
from torua_node.shard.protocol import HostedVector, NodeShards

__all__ = ["main", "start_data_api", "data_endpoints"]


def data_endpoints(
    api: DataApi, search: Search, retriever: Retriever, answerer: Answerer, local: LocalShards | None = None
) -> list[Endpoint]:
    """The `torua-api` endpoints (one queue group on every node; each request in its own task); with
    `local` (the node's replicas), the direct search of the shards it serves, and other routers'
    requests for several of them in one message (`torua.shard.node.<id>.batch`)."""
    q = subjects.API_QUEUE
    return [
        Endpoint("upsert", subjects.GRAPH_UPSERT, api.upsert, UpsertRequest, "Write documents, chunks, entities, relations", q, True),
        Endpoint("delete", subjects.GRAPH_DELETE, api.delete, DeleteRequest, "Delete entities, or documents with their chunks", q, True),
        Endpoint("get", subjects.GRAPH_GET, api.get, GetRequest, "One entity by id", q, True),
        Endpoint("neighbors", subjects.GRAPH_NEIGHBORS, api.cached("neighbors", api.neighbors), NeighborsRequest, "k-hop neighbourhood of ids", q, True),
        Endpoint("query", subjects.GRAPH_QUERY, api.cached("query", api.query), QueryRequest, "Read-only Cypher on every shard, merged exactly", q, True),
        Endpoint("search_vector", subjects.SEARCH_VECTOR, api.cached("search_vector", search.vector), VectorSearchRequest, "Top-k by embedding similarity (exact)", q, True),
        Endpoint("search_text", subjects.SEARCH_TEXT, api.cached("search_text", search.text), TextSearchRequest, "Top-k by BM25 with global statistics", q, True),
        Endpoint("search_hybrid", subjects.SEARCH_HYBRID, api.cached("search_hybrid", search.hybrid), TextSearchRequest, "BM25 and vector fused by reciprocal rank", q, True),
        Endpoint("rag_retrieve", subjects.RAG_RETRIEVE, api.cached("rag_retrieve", retriever.retrieve), RetrieveRequest, "GraphRAG context for a question", q, True),
        Endpoint("rag_answer", subjects.RAG_ANSWER, answerer.answer, AnswerRequest, "LLM answer over rag.retrieve, citing chunk ids", q, True),
        Endpoint("kv_put", subjects.KV_PUT, api.kv_put, KVPutRequest, "Store a value under a key", q, True),
        Endpoint("kv_get", subjects.KV_GET, api.kv_get, KVGetRequest, "Read a key", q, True),
        Endpoint("kv_delete", subjects.KV_DELETE, api.kv_delete, KVDeleteRequest, "Delete a key", q, True),
        *(
            [
                # Every node for the shards it serves (a queue group of its own: each node gets
                # every request): the Python client's direct search.
                Endpoint("shards_vector", subjects.SHARD_VECTOR_ALL, local.vector, HostedVector,
                         "Vector search of the shards this node serves", f"node-{uuid.uuid4().hex}", True),
                # This node's replicas' share of other routers' fan-out rounds: one message per node.
                Endpoint("shards_batch", subjects.shard_node(local.node_id), local.batch, NodeShards,
                         "One operation for several shards this node serves", f"node-{uuid.uuid4().hex}", True),
            ]
            if local is not None else []
        ),
    ]


async def start_data_api(
    settings: NodeSettings, nc: NATS, shardmap: Callable[[], ShardMap | None], local: LocalShards | None = None
) -> DataService:
    """Wire the data path over the node's connection and start the `torua-api` service; requests to
    shards the node serves are answered by its replicas in-process (`local`)."""
    client = NatsShardClient(nc, shardmap, local=local)
    embedder = ClusterEmbedder(settings, lambda: client.shardmap().embedding_dim)
    graph = GraphReads(client)
    cache = ResultCache()
    lag = ApplyLag(max_lag=settings.max_apply_lag)
    api = DataApi(
        nc.jetstream(), client, graph, embedder, cache, queries=Queries(client, QueryLimits.of(settings)), lag=lag,
    )
    search = Search(client, embedder)
    retriever = Retriever(client, graph, embedder)
    answerer = Answerer(retriever, settings)
    await follow_applied(nc, cache, lag)
    service = await start_data_service(nc, data_endpoints(api, search, retriever, answerer, local))
    return DataService(service, cache)


async def _run(node: Node) -> None:
    loop = asyncio.get_running_loop()
    # Both stop gracefully and keep the data; decommissioning is explicit (torua.cluster.drain).
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop)
    await node.run()


def main() -> None:
    try:
        settings = load_settings(NodeSettings)
        setup_logging(settings.log_level, settings.log_json)
        if settings.metrics_port is not None:
            metrics.serve(settings.metrics_port)
        collector.tune()
        node = Node(settings, partial(start_data_api, settings))
        bind(role="node", node_id=node.node_id)
        eventloop.run(_run(node), settings.event_loop)
    except ToruaError as exc:
        print(f"torua node: {exc.description}", file=sys.stderr)
        sys.exit(2)
