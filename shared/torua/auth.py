"""NATS roles and permissions (DESIGN §5, docs/security.md): the one definition that `torua up --auth`
and the compose secure profile (`python -m torua.auth compose DIR`) render into nats-server
configuration.

Three roles:

- `service`: coordinators and nodes; everything (the WAL, JetStream's API, KV, heartbeats).
- `client`: requests to the data API (`torua.graph.*`, `torua.search.*`, `torua.rag.*`,
  `torua.kv.*`), `torua.cluster.health|info`, the shards' two point reads
  (`torua.shard.*.get`, `torua.shard.*.kv_get`: the client's direct reads, docs/api.md) and their
  vector search (`torua.shard.*.vector`: the client's direct search); replies come back on its
  `_INBOX.>`.
- `admin`: the client's subjects, the cluster admin API (`torua.cluster.*`), the nodes' endpoints
  (`torua.node.<id>.<name>`) and service discovery (`$SRV.>`).

Neither client nor admin may publish to the log (`torua.wal.>`), the shards' other subjects
(any `torua.shard.<n>.<op>` but those reads; replicas' applied positions; the routers' requests to
one node for several shards, `torua.shard.node.<id>.batch`), JetStream's API and
acks (`$JS.>`), KV (`$KV.>`), the object store (`$O.>`), heartbeats or announcements; they subscribe
only to `_INBOX.>` (never to `torua.shard.>`: no one but a replica may answer a shard's requests).
Publish and subscribe are allow-lists, so anything not listed is refused too; the deny lists repeat
the dangerous subjects explicitly (and take precedence over `torua.node.*.*`, which would otherwise
match `torua.node.heartbeat.<id>`).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from torua import subjects
from torua.connect import NatsAuth
from torua.shardwire import GET, KV_GET, VECTOR

__all__ = [
    "ROLES",
    "Permissions",
    "PERMISSIONS",
    "RoleUser",
    "AuthSetup",
    "authorization_block",
    "read_auth_file",
]

ROLES = ("service", "admin", "client")


def _family(subject: str) -> str:
    """`torua.graph.upsert` -> `torua.graph.*`: every subject of one family."""
    return subject.rsplit(".", 1)[0] + ".*"


# What no one but the services may publish to.
SERVICE_ONLY = (
    subjects.WAL_SUBJECTS,  # torua.wal.>: the log itself
    "torua.shard.>",  # the router's requests to shards, and replicas' applied positions
    "$JS.>",  # JetStream's API ($JS.API.>), acks on the nodes' consumers, flow control
    "$KV.>",  # the shard map, the leader lease, the kv data
    "$O.>",  # snapshots in the object store
    subjects.HEARTBEAT_ALL,
    subjects.ANNOUNCE,
)

# The shards' point reads, which the client sends straight to the owning shard (docs/api.md,
# "Direct point reads"): read-only, and answered under the same rules as through a router.
SHARD_POINT_READS = tuple(f"torua.shard.*.{op.name}" for op in (GET, KV_GET))  # as subjects.shard_endpoint
# The shards' vector search, which the Python client sends to every shard and merges (docs/api.md,
# "Direct vector search"): read-only too, answered under the same rules as a router's.
SHARD_SEARCH = (f"torua.shard.*.{VECTOR.name}",)

# What clients and operators may not publish: everything only services may, except the point reads
# (publish deny takes precedence over allow, so `torua.shard.>` itself cannot be denied). Every other
# shard subject is refused by the allow-lists anyway; the dangerous ones are repeated here.
CLIENT_PUBLISH_DENY = (
    *(s for s in SERVICE_ONLY if s != "torua.shard.>"),
    subjects.SHARD_APPLIED_ALL,  # torua.shard.*.applied: forged positions would mislead routers' caches
    # The parts of large replies, on one replica's own subject; and a router's requests to one node
    # for several shards (subjects.shard_node: five tokens, so that this refuses them whatever the id).
    "torua.shard.*.*.>",
)

CLIENT_REQUESTS = (
    _family(subjects.GRAPH_UPSERT),
    _family(subjects.SEARCH_VECTOR),
    _family(subjects.RAG_RETRIEVE),
    _family(subjects.KV_PUT),
    subjects.CLUSTER_HEALTH,
    subjects.CLUSTER_INFO,
    *SHARD_POINT_READS,
    *SHARD_SEARCH,
)

ADMIN_REQUESTS = (
    *CLIENT_REQUESTS,
    _family(subjects.CLUSTER_INFO),  # torua.cluster.*: nodes, shards, broadcast, drain, snapshot
    subjects.node_endpoint("*", "*"),  # torua.node.<id>.health|info|control|digest
    "$SRV.>",  # nats micro ls / info / stats
)

INBOXES = "_INBOX.>"


@dataclass(frozen=True, slots=True)
class Permissions:
    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()

    def render(self) -> str:
        def lst(items: tuple[str, ...]) -> str:
            return "[" + ", ".join(json.dumps(s) for s in items) + "]"

        pub = f"allow: {lst(self.publish_allow)}" + (f", deny: {lst(self.publish_deny)}" if self.publish_deny else "")
        sub = f"allow: {lst(self.subscribe_allow)}" + (
            f", deny: {lst(self.subscribe_deny)}" if self.subscribe_deny else ""
        )
        return f"{{ publish: {{ {pub} }}, subscribe: {{ {sub} }} }}"


PERMISSIONS: dict[str, Permissions] = {
    # The services publish and subscribe to everything they use: the data path, the log and
    # JetStream's API, KV, heartbeats, micro endpoints' replies to any inbox.
    "service": Permissions(publish_allow=(">",), subscribe_allow=(">",)),
    "admin": Permissions(
        publish_allow=ADMIN_REQUESTS, publish_deny=CLIENT_PUBLISH_DENY,
        subscribe_allow=(INBOXES,), subscribe_deny=SERVICE_ONLY,
    ),
    "client": Permissions(
        publish_allow=CLIENT_REQUESTS, publish_deny=CLIENT_PUBLISH_DENY,
        subscribe_allow=(INBOXES,), subscribe_deny=SERVICE_ONLY,
    ),
}


@dataclass(frozen=True, slots=True)
class RoleUser:
    role: str
    user: str
    password: str = field(repr=False)


def new_password() -> str:
    # token_urlsafe: letters, digits, '-' and '_' only, so it never needs escaping in a nats-server
    # config (and never starts with "$2", which nats-server would read as a bcrypt hash).
    return secrets.token_urlsafe(24)


def authorization_block(users: list[RoleUser]) -> str:
    """nats-server's `authorization { users = [...] }`, each user with its role's permissions."""
    lines = ["authorization {", "  users = ["]
    for u in users:
        lines.append(
            f"    {{ user: {json.dumps(u.user)}, password: {json.dumps(u.password)}, "
            f"permissions: {PERMISSIONS[u.role].render()} }}"
        )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class AuthSetup:
    """One user per role with a fresh random password (no `no_auth_user`: anonymous is refused)."""

    users: dict[str, RoleUser]

    @classmethod
    def generate(cls) -> AuthSetup:
        return cls({role: RoleUser(role, role, new_password()) for role in ROLES})

    def server_config(self) -> str:
        return authorization_block(list(self.users.values()))

    def auth(self, role: str) -> NatsAuth:
        u = self.users[role]
        return NatsAuth(user=u.user, password=u.password)

    def write_auth_file(self, path: Path, url: str) -> None:
        """`<data-dir>/auth.json`: the client and admin credentials and the URL, mode 0600."""
        doc = {
            "url": url,
            "users": {r: {"user": self.users[r].user, "password": self.users[r].password} for r in ("client", "admin")},
        }
        _write_private(path, json.dumps(doc, indent=2) + "\n")

    def write_password(self, role: str, path: Path) -> None:
        _write_private(path, self.users[role].password + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, never readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_auth_file(path: Path, role: str = "client") -> tuple[str, NatsAuth]:
    """The URL and one role's credentials from an auth.json written by `torua up --auth`."""
    try:
        doc = json.loads(path.read_text())
        user = doc["users"][role]
        return str(doc["url"]), NatsAuth(user=str(user["user"]), password=str(user["password"]))
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: not an auth file with a {role!r} user (written by `torua up --auth`)") from None


# The three servers of the compose cluster profile (deploy/nats/cluster-secure.conf).
COMPOSE_NATS_SERVERS = ("nats-1", "nats-2", "nats-3")


def routes_block(password: str, hosts: tuple[str, ...] = COMPOSE_NATS_SERVERS, port: int = 6222) -> str:
    """The `cluster {}` part of a secure NATS cluster: routes authenticate to each other as `route`."""
    lines = [f'authorization {{ user: "route", password: {json.dumps(password)} }}', "routes: ["]
    lines += [f'  "nats-route://route:{password}@{host}:{port}"' for host in hosts]
    lines.append("]")
    return "\n".join(lines) + "\n"


def write_compose_secrets(directory: Path) -> None:
    """The files the compose secure modes mount (deploy/secure.env, deploy/cluster-secure.env):
    the nats-server include with every role's permissions, the routes' credentials of the
    three-server cluster, and one password file per role."""
    setup = AuthSetup.generate()
    directory.mkdir(parents=True, exist_ok=True)
    # Only its owner may enter the directory: that is what keeps other users of the host out.
    directory.chmod(0o700)
    _write_private(directory / "nats-auth.conf", "# generated by python -m torua.auth compose\n" + setup.server_config())
    _write_private(directory / "nats-routes.conf", "# generated by python -m torua.auth compose\n"
                   + routes_block(new_password()))
    for role in ROLES:
        setup.write_password(role, directory / f"{role}.password")
    # Bind-mounted as is into the coordinator and node containers, whose uid (10001) is not the
    # host user that wrote it: readable there, and on the host only through the 0700 directory.
    (directory / "service.password").chmod(0o644)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "compose":
        print("usage: python -m torua.auth compose DIR   (writes nats-auth.conf, nats-routes.conf, <role>.password)",
              file=sys.stderr)
        return 2
    directory = Path(argv[1])
    write_compose_secrets(directory)
    print(f"wrote {directory}/nats-auth.conf, nats-routes.conf and {', '.join(f'{r}.password' for r in ROLES)}; "
          "restart the deployment to use them (docker compose --env-file deploy/secure.env up -d --force-recreate)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
