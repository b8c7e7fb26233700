"""The `torua` command line: run a cluster, load data, ask questions.

Every data command prints something readable for people, or JSON with `--json` for scripts. An
error is one line on stderr (`torua: ...`) and a non-zero exit code, never a traceback (set
TORUA_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from torua import eventloop
from torua.client import Client
from torua.display import answer_text, retrieve_text, status_text, table
from torua.errors import BadRequest, ToruaError
from torua.settings import DEFAULT_NATS_URL, NatsConnectionSettings, load_settings
from torua.wire import DrainReply

if TYPE_CHECKING:
    from torua.connect import NatsAuth
    from torua.extract import Extractor
    from torua.llm import LLMSettings

__all__ = ["main", "build_parser", "CliSettings"]


class CliSettings(NatsConnectionSettings):
    """What the command line takes from the environment: read once, in main(). NATS credentials
    and TLS: TORUA_NATS_* (torua.settings.NatsConnectionSettings), the flags below win over them."""

    model_config = SettingsConfigDict(env_prefix="TORUA_", extra="ignore", frozen=True, populate_by_name=True)

    # The NATS ecosystem's own variable; --server wins over it.
    nats_url: str = Field("", validation_alias="NATS_URL")
    # TORUA_DEBUG: any value shows the traceback of an unexpected error.
    debug: str = ""


def _print_json(value: Any) -> None:
    print(json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False))


async def _connect(args: argparse.Namespace) -> Client:
    # main() has resolved --server (the option, else $NATS_URL, else the default) and the
    # credentials (the flags, else TORUA_NATS_*).
    return await Client.connect(args.server, timeout=args.timeout, auth=args.nats_auth)


def _warn_partial(partial: bool, shards: dict[str, Any]) -> None:
    if partial:
        failed = sorted((k for k, v in shards.items() if not v.ok), key=int)
        print(f"torua: warning: partial result, shards {', '.join(failed)} did not answer", file=sys.stderr)


# --- commands -------------------------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        if args.wait:
            await client.wait_for_state(args.wait, args.wait_timeout)
        info, nodes, shards = await asyncio.gather(client.cluster_info(), client.cluster_nodes(), client.cluster_shards())
    if args.json:
        _print_json({"info": info, "nodes": nodes.nodes, "shards": shards})
    else:
        print(status_text(info, nodes, shards))
    return 0 if info.state != "red" else 1


def _drain_line(reply: DrainReply) -> str:
    if reply.done:
        return f"{reply.node}: drained, it holds no replica (stop it for good, or undo: torua drain {reply.node} --cancel)"
    if not reply.draining:
        return f"{reply.node}: not draining ({reply.status})"
    moving = [f"{s.shard}->{','.join(s.to) or 'caught up'}" for s in reply.shards if s.state == "moving"]
    blocked = [str(s.shard) for s in reply.shards if s.state == "blocked"]
    parts = [f"{reply.node}: draining, {reply.remaining} shard(s) left"]
    if moving:
        parts.append(f"moving {' '.join(moving)}")
    if blocked:
        parts.append(f"blocked (no other node can take them) {' '.join(blocked)}")
    return "; ".join(parts)


async def _drain(args: argparse.Namespace) -> int:
    last: list[str] = []

    def show(reply: DrainReply) -> None:
        line = _drain_line(reply)
        if not args.json and (not last or line != last[-1]):
            print(line, flush=True)
        last.append(line)

    async with await _connect(args) as client:
        if args.cancel:
            reply = await client.cancel_drain(args.node)
        elif args.status:
            reply = await client.drain_status(args.node)
        else:
            reply = await client.drain(args.node, wait=not args.no_wait, timeout=args.wait, progress=show)
    if args.json:
        _print_json(reply)
    elif not last or _drain_line(reply) != last[-1]:
        print(_drain_line(reply))
    return 0


async def _snapshot(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        reply = await client.snapshot(args.shard or None, timeout=args.timeout)
    if args.json:
        _print_json(reply)
    else:
        for s in reply.shards:
            print(f"shard {s.shard}: snapshot at log position {s.seq}, {s.bytes:,} bytes (taken on {s.node})")
    return 0


def _param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw  # a bare word is a string


async def _query(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        reply = await client.query(args.cypher, dict(args.param or []))
    if args.json:
        _print_json(reply)
        return 0
    _warn_partial(reply.partial, reply.shards)
    rows = [[json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v for v in row] for row in reply.rows]
    print(table(reply.columns, rows) if reply.columns else "(no columns)")
    print(f"({len(reply.rows)} row{'s' if len(reply.rows) != 1 else ''})")
    return 0


async def _search(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        if args.mode == "vector":
            reply = await client.search_vector(text=args.text, k=args.k, target=args.target)
        elif args.mode == "hybrid":
            reply = await client.search_hybrid(args.text, k=args.k, target=args.target)
        else:
            reply = await client.search_text(args.text, k=args.k, target=args.target)
        names: dict[str, str] = {}
        if args.target == "entities" and not args.json and reply.hits:
            got = await asyncio.gather(*(client.get(h.id) for h in reply.hits), return_exceptions=True)
            names = {h.id: g.entity.name for h, g in zip(reply.hits, got) if not isinstance(g, BaseException)}
    if args.json:
        _print_json(reply)
        return 0
    _warn_partial(reply.partial, reply.shards)
    if not reply.hits:
        print("no hits")
        return 0
    headers = ["RANK", "ID", "SCORE", "SHARD"] + (["NAME"] if names else [])
    rows = [[i, h.id, f"{h.score:.4f}", h.shard] + ([names.get(h.id, "")] if names else [])
            for i, h in enumerate(reply.hits, 1)]
    print(table(headers, rows))
    return 0


async def _retrieve(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        reply = await client.retrieve(args.question, k=args.k, hops=args.hops, token_budget=args.token_budget)
    if args.json:
        _print_json(reply)
        return 0
    _warn_partial(reply.partial, reply.shards)
    print(retrieve_text(reply, args.question))
    if args.context:
        print("\nContext:\n" + reply.context)
    return 0


async def _answer(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        reply = await client.answer(
            args.question, k=args.k, hops=args.hops, token_budget=args.token_budget, timeout=args.wait
        )
    if args.json:
        _print_json(reply)
    else:
        print(answer_text(reply))
    return 0


async def _ingest(args: argparse.Namespace) -> int:
    from torua.embedders import EmbedderSettings, make_embedder
    from torua.ingest import IngestOptions, Progress, discover, ingest_paths

    discover(args.paths)  # bad paths fail before connecting
    opts = IngestOptions(
        max_tokens=args.max_tokens, overlap=args.overlap, batch_size=args.batch_size,
        concurrency=args.concurrency, force=args.force, topics=not args.no_topics,
    )
    if not 0 <= opts.overlap < opts.max_tokens:
        raise BadRequest("--overlap must be at least 0 and less than --max-tokens")
    # The settings this run needs, read once, before connecting: a wrong value stops it here.
    extractor = _extractor(args)
    # "cluster": the nodes embed with their own TORUA_EMBEDDER, always consistent with queries.
    embedding = None if args.embedder == "cluster" else load_settings(EmbedderSettings, embedder=args.embedder)
    progress = Progress(sys.stderr, enabled=True if args.progress else None)
    async with await _connect(args) as client:
        embedder = None
        if embedding is not None:
            embedder = make_embedder((await client.cluster_info()).embedding_dim, embedding)
        stats = await ingest_paths(client, args.paths, opts, extractor=extractor, embedder=embedder, progress=progress)
    if args.json:
        print(json.dumps(stats.as_dict(), indent=2))
    else:
        print(stats.summary())
    return 1 if stats.unreadable else 0  # the rest was ingested; the warnings said what was not


def _llm_settings(args: argparse.Namespace) -> LLMSettings:
    """TORUA_LLM_*, with --llm-url, --llm-model and --llm-rate over them."""
    from torua.llm import LLMSettings

    overrides = {k: v for k, v in (("llm_url", args.llm_url), ("llm_model", args.llm_model),
                                   ("llm_rate", args.llm_rate)) if v is not None}
    settings = load_settings(LLMSettings).model_copy(update=overrides)
    if not settings.llm_url:
        raise BadRequest("--extractor llm needs a model endpoint: set TORUA_LLM_URL or pass --llm-url")
    return settings


def _extractor(args: argparse.Namespace) -> Extractor:
    from torua.extract import HeuristicExtractor, LLMExtractor, NullExtractor
    from torua.llm import OpenAIConfig

    if args.extractor == "none":
        return NullExtractor()
    if args.extractor == "heuristic":
        return HeuristicExtractor()
    return LLMExtractor(OpenAIConfig.from_llm_settings(_llm_settings(args)))


def _cmd_up(args: argparse.Namespace) -> int:
    from torua.up import UpOptions, run_up

    opts = UpOptions(nodes=args.nodes, shards=args.shards, replicas=args.replicas, port=args.port, data_dir=args.data_dir,
                     auth=args.auth)
    if args.sample is not None:
        if not args.sample.is_dir():
            raise BadRequest(f"--sample {args.sample}: no such directory")
        opts.sample = args.sample
    return run_up(opts)


def _cmd_coordinator(_: argparse.Namespace) -> int:
    from torua_coordinator.main import main as coordinator_main

    coordinator_main()
    return 0


def _cmd_node(_: argparse.Namespace) -> int:
    from torua_node.main import main as node_main

    node_main()
    return 0


# --- the parser -----------------------------------------------------------------------------------


def _async(fn: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return eventloop.run(fn(args))

    return run


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _non_negative(value: str) -> int:
    return 0 if value.strip() == "0" else _positive(value)


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not rate >= 0:
        raise argparse.ArgumentTypeError("must be 0 (unlimited) or more")
    return rate


def _retrieval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=_positive, default=5, help="passages to return (default 5)")
    p.add_argument("--hops", type=_non_negative, default=3, help="graph hops from the question's entities (default 3)")
    p.add_argument("--token-budget", type=_positive, default=2000, help="context size in tokens (default 2000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _connection_args(p: argparse.ArgumentParser) -> None:
    """NATS credentials and TLS (docs/security.md); each wins over its TORUA_NATS_* variable."""
    g = p.add_argument_group("NATS credentials and TLS (default: the TORUA_NATS_* variables)")
    g.add_argument("--auth-file", type=Path, metavar="FILE",
                   help="the auth.json `torua up --auth` wrote: its URL and the --role's user and password")
    g.add_argument("--role", choices=["client", "admin"], default="client", help="the user to take from --auth-file")
    g.add_argument("--user", help="NATS user ($TORUA_NATS_USER); the password from $TORUA_NATS_PASSWORD(_FILE)")
    g.add_argument("--password-file", type=Path, metavar="FILE", help="a file holding the user's password")
    g.add_argument("--token-file", type=Path, metavar="FILE", help="a file holding a NATS token ($TORUA_NATS_TOKEN)")
    g.add_argument("--nkey-seed", type=Path, metavar="FILE", help="an nkey seed file ($TORUA_NATS_NKEY_SEED)")
    g.add_argument("--creds", type=Path, metavar="FILE", help="a NATS .creds file ($TORUA_NATS_CREDS)")
    g.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA to verify the server ($TORUA_NATS_TLS_CA)")
    g.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate ($TORUA_NATS_TLS_CERT)")
    g.add_argument("--tls-key", type=Path, metavar="FILE", help="client key ($TORUA_NATS_TLS_KEY)")


def _nats_auth(args: argparse.Namespace, settings: CliSettings) -> NatsAuth:
    """The flags over TORUA_NATS_*: a method given as a flag replaces the environment's."""
    from torua.auth import read_auth_file

    if args.auth_file is not None:
        try:
            url, auth = read_auth_file(args.auth_file, args.role)
        except ValueError as exc:
            raise BadRequest(f"--auth-file {exc}") from None
        args.server = args.server or url
        return auth
    methods = {"nats_user": args.user, "nats_password_file": args.password_file, "nats_token_file": args.token_file,
               "nats_nkey_seed": args.nkey_seed, "nats_creds": args.creds}
    overrides: dict[str, Any] = {}
    if any(v is not None for v in methods.values()):
        overrides = dict.fromkeys(("nats_user", "nats_password", "nats_password_file", "nats_token",
                                   "nats_token_file", "nats_nkey_seed", "nats_creds"))
        if args.user is not None and args.password_file is None and settings.nats_user in (None, args.user):
            # --user alone keeps the password the environment gives for that user.
            overrides.update(nats_password=settings.nats_password, nats_password_file=settings.nats_password_file)
        overrides.update({k: v for k, v in methods.items() if v is not None})
    tls = {"nats_tls_ca": args.tls_ca, "nats_tls_cert": args.tls_cert, "nats_tls_key": args.tls_key}
    overrides.update({k: v for k, v in tls.items() if v is not None})
    return load_settings(CliSettings, **overrides).nats_auth if overrides else settings.nats_auth


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torua", description="Torua: a distributed GraphRAG store on Kuzu and NATS")
    p.add_argument("--server", "-s", help=f"NATS URL (default: $NATS_URL or {DEFAULT_NATS_URL})")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for NATS (default 5)")
    _connection_args(p)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run a whole local cluster: nats-server, a coordinator and N nodes")
    up.add_argument("--nodes", type=_positive, default=3)
    up.add_argument("--shards", type=_positive, default=8)
    up.add_argument("--replicas", type=_positive, default=2)
    up.add_argument("--port", type=int, default=4222)
    up.add_argument("--data-dir", type=Path, default=Path("data"))
    up.add_argument("--sample", type=Path, metavar="DIR", help="once green, ingest DIR and show one retrieval")
    up.add_argument("--auth", action="store_true",
                    help="require credentials: roles service/admin/client, written to DATA_DIR/auth.json")
    up.set_defaults(func=_cmd_up)

    sub.add_parser("coordinator", help="run a coordinator (settings from TORUA_* variables)").set_defaults(
        func=_cmd_coordinator
    )
    sub.add_parser("node", help="run a node (settings from TORUA_* variables)").set_defaults(func=_cmd_node)

    st = sub.add_parser("status", help="nodes and shards of the cluster")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--wait", choices=["green", "yellow"],
                    help="first wait until the cluster is at least this state (a rolling restart's step)")
    st.add_argument("--wait-timeout", type=float, default=120.0, metavar="SECONDS",
                    help="give up waiting after this long, exit 2 (default 120)")
    st.set_defaults(func=_async(_status))

    dr = sub.add_parser("drain", help="decommission a node: move its replicas away (make-before-break), report progress")
    dr.add_argument("node", metavar="NODE")
    what = dr.add_mutually_exclusive_group()
    what.add_argument("--cancel", action="store_true", help="undo: the node takes replicas again")
    what.add_argument("--status", action="store_true", help="only report how far the drain has got")
    what.add_argument("--no-wait", action="store_true", help="start the drain and return at once")
    dr.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                    help="give up waiting after this long (default 600; the drain goes on)")
    dr.add_argument("--json", action="store_true", help="print the last report as JSON")
    dr.set_defaults(func=_async(_drain))

    sn = sub.add_parser("snapshot", help="snapshot shards into the object store now; their logs are then purged")
    sn.add_argument("--shard", type=_non_negative, action="append", metavar="N",
                    help="only this shard (repeatable; default every shard)")
    sn.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="how long to wait (default 600)")
    sn.add_argument("--json", action="store_true", help="machine-readable output")
    sn.set_defaults(func=_async(_snapshot))

    ing = sub.add_parser("ingest", help="load .txt, .md and .jsonl files (directories recursively)")
    ing.add_argument("paths", nargs="+", metavar="PATH")
    ing.add_argument("--concurrency", type=_positive, default=4, help="requests in flight (default 4)")
    ing.add_argument("--batch-size", type=_positive, default=500, help="records per write (default 500)")
    ing.add_argument("--max-tokens", type=_positive, default=256, help="tokens per chunk, ~4 chars each (default 256)")
    ing.add_argument("--overlap", type=_non_negative, default=32, help="tokens shared by consecutive chunks (default 32)")
    ing.add_argument("--extractor", choices=["heuristic", "llm", "none"], default="heuristic",
                     help="entities and relations: heuristic (no model, default), llm (TORUA_LLM_*), none")
    ing.add_argument("--embedder", choices=["cluster", "static", "hash", "openai", "local"], default="cluster",
                     help="cluster (default: the nodes embed), or embed here (TORUA_EMBEDDING_* settings)")
    ing.add_argument("--llm-url", help="OpenAI-compatible base URL (default: $TORUA_LLM_URL)")
    ing.add_argument("--llm-model", help="model name (default: $TORUA_LLM_MODEL)")
    ing.add_argument("--llm-rate", type=_rate, help="LLM requests per second (default: $TORUA_LLM_RATE, unlimited)")
    ing.add_argument("--force", action="store_true", help="write documents again even if already ingested")
    ing.add_argument("--no-topics", action="store_true",
                     help="do not make markdown headings `topic` entities mentioned by their sections' chunks")
    ing.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    ing.add_argument("--json", action="store_true", help="print the summary as JSON")
    ing.set_defaults(func=_async(_ingest))

    q = sub.add_parser("query", help="run read-only Cypher on every shard and merge the rows")
    q.add_argument("cypher")
    q.add_argument("--param", "-p", action="append", type=_param, metavar="NAME=VALUE", help="a parameter (JSON value)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_async(_query))

    se = sub.add_parser("search", help="top-k chunks or entities by text, vector or both")
    se.add_argument("text")
    se.add_argument("--mode", choices=["text", "vector", "hybrid"], default="hybrid")
    se.add_argument("--target", choices=["chunks", "entities"], default="chunks")
    se.add_argument("-k", type=_positive, default=10)
    se.add_argument("--json", action="store_true", help="machine-readable output")
    se.set_defaults(func=_async(_search))

    rt = sub.add_parser("retrieve", help="GraphRAG context for a question: passages, entities, relations")
    rt.add_argument("question")
    _retrieval_args(rt)
    rt.add_argument("--context", action="store_true", help="also print the context text an LLM would get")
    rt.set_defaults(func=_async(_retrieve))

    an = sub.add_parser("answer", help="an LLM answer citing chunk ids (the nodes need TORUA_LLM_URL)")
    an.add_argument("question")
    _retrieval_args(an)
    an.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the answer (default 120)")
    an.set_defaults(func=_async(_answer))
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    debug = False
    try:
        settings = load_settings(CliSettings)
        debug = bool(settings.debug)
        args.nats_auth = _nats_auth(args, settings)
        args.server = args.server or settings.nats_url or DEFAULT_NATS_URL
        code = args.func(args)
    except ToruaError as exc:
        print(f"torua: {exc.description}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if debug:
            raise
        print(f"torua: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
