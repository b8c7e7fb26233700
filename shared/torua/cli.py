"""The `torua` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from torua.client import Client
from torua.display import status_text
from torua.errors import ToruaError
from torua.settings import DEFAULT_NATS_URL

__all__ = ["main"]


def _url(args: argparse.Namespace) -> str:
    return args.server or os.environ.get("NATS_URL") or DEFAULT_NATS_URL


def _print_json(value: Any) -> None:
    print(json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False))


async def _status(args: argparse.Namespace) -> int:
    async with await Client.connect(_url(args), timeout=args.timeout) as client:
        info, nodes, shards = await asyncio.gather(client.cluster_info(), client.cluster_nodes(), client.cluster_shards())
    if args.json:
        _print_json({"info": info, "nodes": nodes.nodes, "shards": shards})
    else:
        print(status_text(info, nodes, shards))
    return 0 if info.state != "red" else 1


def _cmd_up(args: argparse.Namespace) -> int:
    from torua.up import UpOptions, run_up

    return run_up(
        UpOptions(nodes=args.nodes, shards=args.shards, replicas=args.replicas, port=args.port, data_dir=args.data_dir)
    )


def _cmd_coordinator(_: argparse.Namespace) -> int:
    from torua_coordinator.main import main as coordinator_main

    coordinator_main()
    return 0


def _cmd_node(_: argparse.Namespace) -> int:
    from torua_node.main import main as node_main

    node_main()
    return 0


def _async(fn: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(fn(args))

    return run


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torua", description="Torua: a distributed GraphRAG store on Kuzu and NATS")
    p.add_argument("--server", "-s", help=f"NATS URL (default: $NATS_URL or {DEFAULT_NATS_URL})")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for NATS (default 5)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run a whole local cluster: nats-server, a coordinator and N nodes")
    up.add_argument("--nodes", type=_positive, default=3)
    up.add_argument("--shards", type=_positive, default=8)
    up.add_argument("--replicas", type=_positive, default=2)
    up.add_argument("--port", type=int, default=4222)
    up.add_argument("--data-dir", type=Path, default=Path("data"))
    up.set_defaults(func=_cmd_up)

    sub.add_parser("coordinator", help="run a coordinator (settings from TORUA_* variables)").set_defaults(
        func=_cmd_coordinator
    )
    sub.add_parser("node", help="run a node (settings from TORUA_* variables)").set_defaults(func=_cmd_node)

    st = sub.add_parser("status", help="nodes and shards of the cluster")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_async(_status))
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except ToruaError as exc:
        print(f"torua: {exc.description}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
