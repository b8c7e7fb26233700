from __future__ import annotations

import asyncio
import signal
import sys

from torua.errors import ToruaError
from torua.logs import bind, setup_logging
from torua.metrics import metrics
from torua.settings import load_settings
from torua_node.node.process import Node
from torua_node.settings import NodeSettings

__all__ = ["main"]


async def _run(node: Node) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, node.stop, True)
    loop.add_signal_handler(signal.SIGINT, node.stop, False)
    await node.run()


def main() -> None:
    try:
        settings = load_settings(NodeSettings)
        setup_logging(settings.log_level, settings.log_json)
        if settings.metrics_port is not None:
            metrics.serve(settings.metrics_port)
        node = Node(settings)
        bind(role="node", node_id=node.node_id)
        asyncio.run(_run(node))
    except ToruaError as exc:
        print(f"torua node: {exc.description}", file=sys.stderr)
        sys.exit(2)
