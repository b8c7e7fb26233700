"""NATS credentials in settings, and the roles' permissions `torua up --auth` and the compose secure
mode render (torua.auth): derived from torua.subjects, valid for a real nats-server."""

from __future__ import annotations

import argparse
import json
import stat
import subprocess
from pathlib import Path

import pytest

from torua import subjects
from torua.auth import PERMISSIONS, ROLES, AuthSetup, authorization_block, read_auth_file
from torua.cli import CliSettings, _nats_auth, build_parser
from torua.connect import NatsAuth
from torua.errors import ConfigError
from torua.natsserver import _config, find_nats_server
from torua.settings import NATS_AUTH_VARIABLES, BaseServiceSettings, NatsConnectionSettings, load_settings
from torua_coordinator.settings import CoordinatorSettings
from torua_node.settings import NodeSettings


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allowed(role: str, subject: str) -> bool:
    perms = PERMISSIONS[role]
    return any(matches(p, subject) for p in perms.publish_allow) and not any(
        matches(p, subject) for p in perms.publish_deny
    )


DATA_SUBJECTS = [
    subjects.GRAPH_UPSERT, subjects.GRAPH_DELETE, subjects.GRAPH_GET, subjects.GRAPH_NEIGHBORS, subjects.GRAPH_QUERY,
    subjects.SEARCH_VECTOR, subjects.SEARCH_TEXT, subjects.SEARCH_HYBRID, subjects.RAG_RETRIEVE, subjects.RAG_ANSWER,
    subjects.KV_PUT, subjects.KV_GET, subjects.KV_DELETE,
]
ADMIN_SUBJECTS = [
    subjects.CLUSTER_NODES, subjects.CLUSTER_SHARDS, subjects.CLUSTER_BROADCAST, subjects.CLUSTER_DRAIN,
    "torua.cluster.snapshot", subjects.node_endpoint("node-1", "health"), subjects.node_endpoint("n-1", "control"),
    subjects.node_endpoint("n-1", "digest"), "$SRV.PING", "$SRV.INFO.torua-node",
]
SERVICE_ONLY = [
    subjects.wal_subject(0), subjects.wal_subject(17), subjects.shard_endpoint(3, "query"), subjects.shard_applied(3),
    f"$JS.API.STREAM.DELETE.{subjects.WAL_STREAM}", "$JS.API.STREAM.INFO.TORUA_WAL", "$JS.API.INFO",
    f"$JS.ACK.{subjects.WAL_STREAM}.node-1.1.2.3.4.5", f"$KV.{subjects.KV_BUCKET}.{subjects.KV_SHARDMAP}",
    f"$KV.{subjects.KV_BUCKET}.{subjects.KV_LEADER}", "$O.torua-snapshots.C.x",
    subjects.heartbeat("node-1"), subjects.heartbeat("ghost"), subjects.ANNOUNCE,
]


@pytest.mark.parametrize("role", ["client", "admin"])
def test_data_api_allowed_and_service_subjects_refused(role: str) -> None:
    for s in [*DATA_SUBJECTS, subjects.CLUSTER_HEALTH, subjects.CLUSTER_INFO]:
        assert allowed(role, s), (role, s)
    for s in SERVICE_ONLY:
        assert not allowed(role, s), (role, s)
    perms = PERMISSIONS[role]
    assert perms.subscribe_allow == ("_INBOX.>",)


def test_admin_api_is_admin_only() -> None:
    for s in ADMIN_SUBJECTS:
        assert allowed("admin", s) and not allowed("client", s), s
    # The node endpoints' pattern also matches heartbeats: the deny list is what refuses them.
    assert matches(subjects.node_endpoint("*", "*"), subjects.heartbeat("x"))
    assert not allowed("admin", subjects.heartbeat("x"))


def test_service_may_do_everything() -> None:
    for s in DATA_SUBJECTS + ADMIN_SUBJECTS + SERVICE_ONLY:
        assert allowed("service", s)


def test_rendered_config_is_valid_for_nats_server(tmp_path: Path) -> None:
    setup = AuthSetup.generate()
    assert set(setup.users) == set(ROLES)
    assert len({u.password for u in setup.users.values()}) == 3
    text = _config("127.0.0.1", -1, tmp_path / "js", None, 1 << 20, "always", setup.server_config())
    assert "no_auth_user" not in text and text.count("password:") == 3
    conf = tmp_path / "n.conf"
    conf.write_text(text)
    run = subprocess.run([find_nats_server(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    for u in setup.users.values():
        assert u.password not in repr(u) and u.password not in repr(setup.auth(u.role))


def test_block_quotes_every_subject() -> None:
    block = authorization_block(list(AuthSetup.generate().users.values()))
    assert '"$JS.>"' in block and '"torua.wal.>"' in block and '"_INBOX.>"' in block


def test_auth_file(tmp_path: Path) -> None:
    setup = AuthSetup.generate()
    path = tmp_path / "d" / "auth.json"
    setup.write_auth_file(path, "nats://127.0.0.1:4999")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert set(doc["users"]) == {"client", "admin"}  # never the service's password
    url, auth = read_auth_file(path, "admin")
    assert url == "nats://127.0.0.1:4999" and auth == setup.auth("admin")
    with pytest.raises(ValueError, match="'service'"):
        read_auth_file(path, "service")


# --- settings ------------------------------------------------------------------------------------


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in NATS_AUTH_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_every_service_reads_the_same_credentials(clean: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    clean.setenv("TORUA_NATS_USER", "service")
    clean.setenv("TORUA_NATS_PASSWORD_FILE", str(pw))
    clean.setenv("TORUA_NATS_TLS_CA", str(ca))
    for cls in (CoordinatorSettings, NodeSettings, CliSettings, NatsConnectionSettings):
        auth = load_settings(cls).nats_auth  # type: ignore[attr-defined]
        assert auth == NatsAuth(user="service", password="s3cret", tls_ca=ca)
    assert issubclass(NodeSettings, BaseServiceSettings) and issubclass(CoordinatorSettings, BaseServiceSettings)


def test_options_for_nats_py(tmp_path: Path) -> None:
    assert NatsAuth().connect_options() == {}
    assert NatsAuth(user="u", password="p").connect_options() == {"user": "u", "password": "p"}
    assert NatsAuth(token="t").connect_options() == {"token": "t"}
    seed, creds = tmp_path / "u.nk", tmp_path / "u.creds"
    assert NatsAuth(nkey_seed=seed).connect_options() == {"nkeys_seed": str(seed)}
    assert NatsAuth(creds=creds).connect_options() == {"user_credentials": str(creds)}
    assert "p" not in repr(NatsAuth(user="u", password="p")).replace("'u'", "")


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"TORUA_NATS_USER": "u", "TORUA_NATS_TOKEN": "t"}, "TORUA_NATS_TOKEN"),
        ({"TORUA_NATS_PASSWORD": "p"}, "TORUA_NATS_USER"),
        ({"TORUA_NATS_CREDS": "/no/such/file"}, "TORUA_NATS_CREDS"),
        ({"TORUA_NATS_TLS_CERT": "__FILE__"}, "TORUA_NATS_TLS_KEY"),
    ],
)
def test_wrong_settings_stop_at_start(clean: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str],
                                      variable: str) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    for k, v in env.items():
        clean.setenv(k, v.replace("__FILE__", str(f)))
    with pytest.raises(ConfigError, match=variable):
        load_settings(NodeSettings)


def test_secrets_are_never_echoed(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("TORUA_NATS_PASSWORD", "hunter2-secret")
    with pytest.raises(ConfigError) as err:
        load_settings(CoordinatorSettings)
    assert "hunter2" not in str(err.value)
    clean.setenv("TORUA_NATS_USER", "u")
    settings = load_settings(CoordinatorSettings)
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_empty_values_are_unset(clean: pytest.MonkeyPatch) -> None:
    """compose passes unset options as empty strings."""
    clean.setenv("TORUA_NATS_USER", "")
    clean.setenv("TORUA_NATS_PASSWORD_FILE", "")
    assert load_settings(NodeSettings).nats_auth == NatsAuth()


def _cli(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args([*argv, "status"])
    args.server = None
    return args


def test_cli_flags_over_the_environment(clean: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file")
    clean.setenv("TORUA_NATS_TOKEN", "env-token")
    settings = load_settings(CliSettings)
    assert _nats_auth(_cli([]), settings) == NatsAuth(token="env-token")
    # A method given as a flag replaces the environment's.
    assert _nats_auth(_cli(["--user", "admin", "--password-file", str(pw)]), settings) == NatsAuth(
        user="admin", password="from-file"
    )
    clean.delenv("TORUA_NATS_TOKEN")
    clean.setenv("TORUA_NATS_USER", "admin")
    clean.setenv("TORUA_NATS_PASSWORD", "env-pw")
    settings = load_settings(CliSettings)
    assert _nats_auth(_cli(["--user", "admin"]), settings) == NatsAuth(user="admin", password="env-pw")
    setup = AuthSetup.generate()
    setup.write_auth_file(tmp_path / "auth.json", "nats://127.0.0.1:4333")
    args = _cli(["--auth-file", str(tmp_path / "auth.json")])
    assert _nats_auth(args, settings) == setup.auth("client") and args.server == "nats://127.0.0.1:4333"


def test_nkey_seed_needs_the_nkeys_package(clean: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    seed = tmp_path / "user.nk"
    seed.write_text("SUAxxx\n")
    clean.setenv("TORUA_NATS_NKEY_SEED", str(seed))
    if importlib.util.find_spec("nkeys") is not None:
        assert load_settings(NodeSettings).nats_auth == NatsAuth(nkey_seed=seed)
    else:
        with pytest.raises(ConfigError, match="TORUA_NATS_NKEY_SEED.*nkeys"):
            load_settings(NodeSettings)
