from __future__ import annotations

import asyncio
import signal
import sys

from torua import collector, eventloop
from torua.errors import ToruaError
from torua.logs import bind, setup_logging
from torua.metrics import metrics
from torua.settings import load_settings
from torua_coordinator.app import Coordinator
from torua_coordinator.settings import CoordinatorSettings

__all__ = ["main"]


async def _run(settings: CoordinatorSettings) -> None:
    coord = Coordinator(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coord.stop)
    await coord.run()


def main() -> None:
    try:
        settings = load_settings(CoordinatorSettings)
        setup_logging(settings.log_level, settings.log_json)
        if settings.metrics_port is not None:
            metrics.serve(settings.metrics_port)
        bind(role="coordinator", coordinator=settings.coordinator_id)
        collector.tune()
        eventloop.run(_run(settings), settings.event_loop)
    except ToruaError as exc:
        print(f"torua coordinator: {exc.description}", file=sys.stderr)
        sys.exit(2)
