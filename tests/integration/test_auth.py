"""`torua up --auth` as a user runs it (a real nats-server, coordinator and node processes): anonymous
connections are refused, the client role reads and writes through the data API, and neither
client nor admin can publish to the log, touch JetStream's API or KV, or forge heartbeats and
announcements. Every refusal is checked by its effect (or rather its absence), behind a barrier:
an allowed message on the same path, sent after the refused one, is seen, and the refused one is
not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from tests.conftest import wait_for
from tests.integration.conftest import SAMPLES, TORUA
from torua import subjects
from torua.auth import read_auth_file
from torua.client import Client
from torua.connect import NatsAuth, PermissionDenied, connect
from torua.errors import Unavailable
from torua.model import Entity
from torua.natsserver import NatsServer
from torua.settings import NATS_AUTH_VARIABLES, nats_auth_from_env
from torua.wire import Announce, Heartbeat

pytestmark = pytest.mark.timeout(300)

ROLES = ("client", "admin")


@dataclass
class SecureCluster:
    proc: subprocess.Popen[str]
    data_dir: Path
    url: str
    creds: dict[str, NatsAuth]
    output: list[str]

    @property
    def auth_file(self) -> Path:
        return self.data_dir / "auth.json"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NATS_AUTH_VARIABLES and k != "NATS_URL"}
    env.pop("TORUA_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    data_dir = tmp_path_factory.mktemp("auth") / "data"
    proc = subprocess.Popen(
        [*TORUA, "up", "--auth", "--nodes", "2", "--shards", "2", "--replicas", "1", "--port", "-1",
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_clean_env(), start_new_session=True,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            output.append(line)
            if "Ctrl-C stops every process" in line or time.monotonic() > deadline:
                break
        text = "".join(output)
        assert "Ctrl-C stops every process" in text, text
        url, client = read_auth_file(data_dir / "auth.json", "client")
        _, admin = read_auth_file(data_dir / "auth.json", "admin")
        service = NatsAuth(user="service", password=(data_dir / "nats" / "service.password").read_text().strip())
        yield SecureCluster(proc, data_dir, url, {"client": client, "admin": admin, "service": service}, output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
async def service_nc(secure: SecureCluster) -> AsyncIterator[NATS]:
    nc = await connect(secure.url, name="test-service", auth=secure.creds["service"])
    yield nc
    await nc.close()


@pytest.fixture
async def admin(secure: SecureCluster) -> AsyncIterator[Client]:
    c = await Client.connect(secure.url, auth=secure.creds["admin"], request_timeout=10.0)
    yield c
    await c.close()


async def _role_nc(secure: SecureCluster, role: str) -> NATS:
    return await connect(secure.url, name=f"test-{role}", auth=secure.creds[role])


# --- set-up, files and secrets ---------------------------------------------------------------------


def test_up_prints_how_to_connect_and_never_a_password(secure: SecureCluster) -> None:
    text = "".join(secure.output)
    assert "cluster is green" in text
    assert f"--auth-file {secure.auth_file}" in text and "anonymous connections are refused" in text
    passwords = [a.password for a in secure.creds.values()]
    assert all(p and p not in text for p in passwords)
    # Nor in any service's log, nor nats-server's.
    for log in (secure.data_dir / "logs").glob("*.log"):
        content = log.read_text(errors="replace")
        assert not any(p in content for p in passwords if p), log


def test_secret_files_are_private(secure: SecureCluster) -> None:
    doc = json.loads(secure.auth_file.read_text())
    assert doc["url"] == secure.url and set(doc["users"]) == {"client", "admin"}
    for f in (secure.auth_file, secure.data_dir / "nats" / "nats-server.conf",
              secure.data_dir / "nats" / "service.password"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    conf = (secure.data_dir / "nats" / "nats-server.conf").read_text()
    assert "authorization" in conf and "no_auth_user" not in conf


# --- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, NatsAuth(user="client", password="wrong"), NatsAuth(token="guess")],
                         ids=["anonymous", "wrong-password", "token"])
async def test_anonymous_and_wrong_credentials_are_refused(secure: SecureCluster, auth: NatsAuth | None) -> None:
    with pytest.raises(Unavailable, match="authorization violation"):
        await Client.connect(secure.url, timeout=3, auth=auth)


def test_cli_without_and_with_credentials(secure: SecureCluster) -> None:
    env = {**_clean_env(), "NATS_URL": secure.url}
    run = subprocess.run([*TORUA, "--timeout", "3", "status"], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "authorization violation" in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    run = subprocess.run([*TORUA, "--auth-file", str(secure.auth_file), "--role", "admin", "status", "--json"],
                         capture_output=True, text=True, env=_clean_env(), timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["info"]["state"] == "green"
    # As client, `torua status` (cluster.nodes and .shards) is refused at once, in one line.
    run = subprocess.run([*TORUA, "--auth-file", str(secure.auth_file), "status"],
                         capture_output=True, text=True, env=_clean_env(), timeout=60)
    assert run.returncode == 2 and "permission denied" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    # The variables, as docs/security.md shows them (the password from a file: never on a command line).
    pw = secure.data_dir / "client.pw"
    pw.write_text(secure.creds["client"].password or "")
    env = {**env, "TORUA_NATS_USER": "client", "TORUA_NATS_PASSWORD_FILE": str(pw)}
    run = subprocess.run([*TORUA, "search", "nothing-here", "--json"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert run.returncode == 0, run.stderr


# --- what the client and admin roles may do --------------------------------------------------------------


async def test_client_writes_and_reads_through_the_data_api(secure: SecureCluster) -> None:
    async with await Client.connect(secure.url, auth=secure.creds["client"]) as c:
        assert (await c.cluster_info()).state == "green"
        reply = await c.upsert(entities=[Entity(id="auth-a", name="Alpha", description="written by the client role")])
        assert (await c.get("auth-a", after=reply.tokens)).entity.name == "Alpha"
        put = await c.kv_put("auth/key", "v")
        assert await c.kv_get("auth/key", after=put.token) == "v"
        hits = await c.search_text("Alpha", target="entities", after=reply.tokens)
        assert [h.id for h in hits.hits] == ["auth-a"]


def test_client_ingests_with_the_cli(secure: SecureCluster) -> None:
    """`torua ingest` as client: writes, its markers in torua.kv, and reads (no JetStream needed)."""
    run = subprocess.run([*TORUA, "--auth-file", str(secure.auth_file), "ingest", str(SAMPLES), "--json"],
                         capture_output=True, text=True, env=_clean_env(), timeout=240)
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)
    assert stats["documents"] > 0, stats
    run = subprocess.run([*TORUA, "--auth-file", str(secure.auth_file), "search", "Lantern Guild", "--json"],
                         capture_output=True, text=True, env=_clean_env(), timeout=60)
    assert run.returncode == 0 and json.loads(run.stdout)["hits"], run.stderr


async def test_client_cannot_use_the_admin_api_and_admin_can(secure: SecureCluster, admin: Client) -> None:
    async with await Client.connect(secure.url, auth=secure.creds["client"], request_timeout=10.0) as c:
        for call in (c.cluster_nodes(), c.node_health("node-1"), c.request("$SRV.PING", {}),
                     c.request(subjects.CLUSTER_DRAIN, {"node": "node-1"})):
            started = time.monotonic()
            # Refused at once, by the server, not after the timeout and retries.
            with pytest.raises(PermissionDenied, match="'client' may not publish to"):
                await call
            assert time.monotonic() - started < 2.0
    assert {n.status for n in (await admin.cluster_nodes()).nodes} == {"healthy"}  # no drain started
    nodes = await admin.cluster_nodes()
    assert {n.id for n in nodes.nodes} >= {"node-1", "node-2"}
    assert (await admin.node_health("node-1")).status == "ok"
    pong = await admin.nc.request("$SRV.PING", b"", timeout=5)
    assert pong.data


# --- what neither may do: checked by the absence of the effect ---------------------------------


async def _wal_state(nc: NATS, shard: int) -> tuple[int, int]:
    js = nc.jetstream()
    info = await js.stream_info(subjects.WAL_STREAM)
    try:
        last = (await js.get_last_msg(subjects.WAL_STREAM, subjects.wal_subject(shard))).seq or 0
    except NotFoundError:
        last = 0
    return info.state.messages, last


@pytest.mark.parametrize("role", ROLES)
async def test_wal_publish_is_refused_and_nothing_lands(secure: SecureCluster, service_nc: NATS, role: str) -> None:
    async with await Client.connect(secure.url, auth=secure.creds["client"]) as writer:
        first = await writer.upsert(entities=[Entity(id=f"wal-{role}-1", name="first")])
        (shard_key, _), = first.tokens.items()
        shard = int(shard_key)
        messages, last = await _wal_state(service_nc, shard)
        forged = b'{"forged": true, "entities": [{"id": "forged-entity"}]}'
        nc = await _role_nc(secure, role)
        try:
            await nc.publish(subjects.wal_subject(shard), forged, headers={"Nats-Msg-Id": f"victim-{role}"})
            await nc.flush()  # the server has read the refused publish before we go on
            with pytest.raises(Exception):  # noqa: B017 - no ack: a timeout (or no responders)
                await nc.jetstream().publish(subjects.wal_subject(shard), forged, timeout=1)
        finally:
            await nc.close()
        # Barrier: an allowed write to the same shard, through the data API, after the refused ones.
        second = await writer.upsert(entities=[Entity(id=f"wal-{role}-1", name="second")])
        assert second.tokens == {shard_key: last + 1}, "something else landed in the shard's log"
        assert await _wal_state(service_nc, shard) == (messages + 1, last + 1)
        assert (await writer.get(f"wal-{role}-1", after=second.tokens)).entity.name == "second"


@pytest.mark.parametrize("role", ROLES)
async def test_jetstream_api_is_refused_and_the_stream_stays(
    secure: SecureCluster, service_nc: NATS, role: str
) -> None:
    js = service_nc.jetstream()
    before = await js.stream_info(subjects.WAL_STREAM)
    nc = await _role_nc(secure, role)
    try:
        for subject in (f"$JS.API.STREAM.DELETE.{subjects.WAL_STREAM}", f"$JS.API.STREAM.PURGE.{subjects.WAL_STREAM}",
                        f"$JS.API.STREAM.DELETE.KV_{subjects.KV_BUCKET}"):
            with pytest.raises(Exception):  # noqa: B017 - refused: the request gets no reply
                await nc.request(subject, b"", timeout=1)
        await nc.flush()
    finally:
        await nc.close()
    # Barrier: the service's own JetStream API requests, answered after the refused ones were read.
    after = await js.stream_info(subjects.WAL_STREAM)
    assert after.state.messages >= before.state.messages and after.state.first_seq == before.state.first_seq
    await js.stream_info(f"KV_{subjects.KV_BUCKET}")  # still there
    async with await Client.connect(secure.url, auth=secure.creds["admin"]) as a:
        assert (await a.cluster_info()).state == "green"


@pytest.mark.parametrize("role", ROLES)
async def test_kv_put_on_the_shard_map_is_refused_and_the_map_is_unchanged(
    secure: SecureCluster, service_nc: NATS, role: str
) -> None:
    js = service_nc.jetstream()
    kv = await js.key_value(subjects.KV_BUCKET)
    before = await kv.get(subjects.KV_SHARDMAP)
    stream = f"KV_{subjects.KV_BUCKET}"
    first = (await js.stream_info(stream)).state.last_seq
    forged = json.dumps({"forged": role, "shards": []}).encode()
    nc = await _role_nc(secure, role)
    try:
        await nc.publish(f"$KV.{subjects.KV_BUCKET}.{subjects.KV_SHARDMAP}", forged)
        await nc.publish(f"$KV.{subjects.KV_BUCKET}.{subjects.KV_LEADER}", forged)
        await nc.flush()
        with pytest.raises(Exception):  # noqa: B017 - through the KV API too: no ack
            await (await nc.jetstream().key_value(subjects.KV_BUCKET)).put(subjects.KV_SHARDMAP, forged)
    finally:
        await nc.close()
    # Barrier: an allowed write to the same bucket (so the same stream), after the refused ones.
    barrier = await kv.put(f"auth-test-barrier-{role}", b"1")
    await kv.delete(f"auth-test-barrier-{role}")
    after = await kv.get(subjects.KV_SHARDMAP)
    assert (after.revision, after.value) == (before.revision, before.value)
    for seq in range(first + 1, barrier):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            continue  # superseded (the bucket keeps one revision per key)
        assert msg.data != forged, f"forged put landed at seq {seq} on {msg.subject}"


async def _node_ids(admin: Client) -> set[str]:
    return {n.id for n in (await admin.cluster_nodes()).nodes}


def _heartbeat(node_id: str) -> bytes:
    # Capacity 0 and draining: a ghost that placement never gives a replica to.
    return msgspec.json.encode(
        Heartbeat(node_id=node_id, incarnation=1, seq=1, version="0", uptime_s=1.0, capacity=0, draining=True)
    )


def _announce(node_id: str, event: str, incarnation: int = 1) -> bytes:
    return msgspec.json.encode(Announce(node_id=node_id, incarnation=incarnation, event=event,  # type: ignore[arg-type]
                                        version="0", capacity=0))


@pytest.mark.parametrize("role", ROLES)
async def test_forged_heartbeats_and_announcements_have_no_effect(
    secure: SecureCluster, service_nc: NATS, admin: Client, role: str
) -> None:
    real = await _node_ids(admin)
    assert {"node-1", "node-2"} <= real
    ghost, witness = f"ghost-{role}", f"witness-{role}"
    nc = await _role_nc(secure, role)
    try:
        # A node that does not exist, by heartbeat and by announcement...
        await nc.publish(subjects.heartbeat(ghost), _heartbeat(ghost))
        await nc.publish(subjects.ANNOUNCE, _announce(ghost, "join"))
        # ...and a real node declared gone for good, or stopping (a high incarnation beats its own).
        await nc.publish(subjects.ANNOUNCE, _announce("node-1", "left", incarnation=10**9))
        await nc.publish(subjects.ANNOUNCE, _announce("node-2", "stop", incarnation=10**9))
        await nc.flush()
    finally:
        await nc.close()
    # Barrier: the same messages from the service role, after the refused ones, do arrive.
    await service_nc.publish(subjects.heartbeat(witness), _heartbeat(witness))
    await service_nc.flush()
    await wait_for(lambda: _has(admin, witness), timeout=15, what=f"{witness} in cluster.nodes")
    nodes = {n.id: n for n in (await admin.cluster_nodes()).nodes}
    assert ghost not in nodes
    assert nodes["node-1"].status == "healthy" and nodes["node-2"].status == "healthy", nodes
    await service_nc.publish(subjects.ANNOUNCE, _announce(witness, "left", incarnation=2))
    await service_nc.flush()
    await wait_for(lambda: _gone(admin, witness), timeout=15, what=f"{witness} gone after its 'left'")
    nodes = {n.id: n for n in (await admin.cluster_nodes()).nodes}
    assert ghost not in nodes and nodes["node-1"].status == "healthy" and nodes["node-2"].status == "healthy"
    assert (await admin.cluster_info()).state == "green"


async def _has(admin: Client, node_id: str) -> bool:
    return node_id in await _node_ids(admin)


async def _gone(admin: Client, node_id: str) -> bool:
    return node_id not in await _node_ids(admin)


@pytest.mark.parametrize("role", ROLES)
async def test_no_subscribing_to_the_log_or_heartbeats(secure: SecureCluster, admin: Client, role: str) -> None:
    """Reading the log would show every write (and heartbeats every node): refused."""
    nc = await _role_nc(secure, role)
    got: list[str] = []

    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        got.append(msg.subject)

    try:
        await nc.subscribe(subjects.WAL_SUBJECTS, cb=cb)
        await nc.subscribe(subjects.HEARTBEAT_ALL, cb=cb)
        await nc.flush()
        since = time.time()
        async with await Client.connect(secure.url, auth=secure.creds["client"]) as writer:
            assert (await writer.upsert(entities=[Entity(id=f"sub-{role}", name="x")])).tokens

        # Barrier: the coordinator has had a heartbeat from every node since we subscribed; the
        # server delivers each message to all its subscribers at once, and a flush's PONG follows
        # anything it sent us before.
        async def fresh_heartbeats() -> bool:
            nodes = (await admin.cluster_nodes()).nodes
            return all((n.last_heartbeat or 0) > since + 0.1 for n in nodes if n.id.startswith("node-"))

        await wait_for(fresh_heartbeats, timeout=15, what="a heartbeat from every node")
        await nc.flush()
        assert got == []
    finally:
        await nc.close()


def test_no_password_in_process_arguments(secure: SecureCluster) -> None:
    """The services get their password from a file, not from their command line or environment."""
    passwords = [a.password for a in secure.creds.values() if a.password]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(secure.data_dir) in cmdline or str(secure.data_dir) in environ:
            assert not any(p in cmdline or p in environ for p in passwords), re.sub(r"\0", " ", cmdline)


# --- the other ways to authenticate, and TLS, against a real nats-server ----------------------------


def _server(tmp_path: Path, extra: str) -> NatsServer:
    from torua.natsserver import start_nats_server

    return start_nats_server(tmp_path / "nats", authorization=extra)


async def test_token_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _server(tmp_path, 'authorization { token: "tok-3f9a" }\n')
    try:
        token_file = tmp_path / "token"
        token_file.write_text("tok-3f9a\n")
        for var in NATS_AUTH_VARIABLES:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("TORUA_NATS_TOKEN_FILE", str(token_file))
        nc = await connect(server.url, name="t", auth=nats_auth_from_env())
        await nc.close()
        for auth in (None, NatsAuth(token="wrong")):
            with pytest.raises(Unavailable, match="authorization violation"):
                await connect(server.url, name="t", timeout=3, auth=auth)
    finally:
        server.stop()


async def test_nkey_seed_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An nkey user: the server knows only the public key, the client signs its challenge with the seed."""
    import nacl.signing
    import nkeys

    seed = nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    server = _server(tmp_path, f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    try:
        seed_file = tmp_path / "user.nk"
        seed_file.write_bytes(seed + b"\n")
        for var in NATS_AUTH_VARIABLES:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("TORUA_NATS_NKEY_SEED", str(seed_file))
        nc = await connect(server.url, name="nk", auth=nats_auth_from_env())
        assert nc.is_connected
        await nc.close()
        with pytest.raises(Unavailable, match="authorization violation"):
            await connect(server.url, name="nk", timeout=3, auth=None)
    finally:
        server.stop()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, signed by the CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=torua-test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.ext"), "-out", str(d / f"{name}.pem"))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
async def test_mutual_tls_with_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _certificates(tmp_path)
    tls = (f'tls {{ cert_file: "{tmp_path}/server.pem", key_file: "{tmp_path}/server.key", '
           f'ca_file: "{tmp_path}/ca.pem", verify: true }}\n')
    server = _server(tmp_path, tls + 'authorization { users = [ { user: "client", password: "pw-71c2" } ] }\n')
    try:
        for var in NATS_AUTH_VARIABLES:
            monkeypatch.delenv(var, raising=False)
        for var, value in (("TORUA_NATS_USER", "client"), ("TORUA_NATS_PASSWORD", "pw-71c2"),
                           ("TORUA_NATS_TLS_CA", f"{tmp_path}/ca.pem"), ("TORUA_NATS_TLS_CERT", f"{tmp_path}/client.pem"),
                           ("TORUA_NATS_TLS_KEY", f"{tmp_path}/client.key")):
            monkeypatch.setenv(var, value)
        auth = nats_auth_from_env()
        url = server.url.replace("nats://", "tls://")
        nc = await connect(url, name="tls", auth=auth)
        assert nc.is_connected
        await nc.close()
        # Without the client certificate (the server verifies clients), or without the CA: refused.
        for partial in (NatsAuth(user="client", password="pw-71c2", tls_ca=auth.tls_ca),
                        NatsAuth(user="client", password="pw-71c2")):
            with pytest.raises(Unavailable):
                await connect(url, name="tls", timeout=3, auth=partial)
    finally:
        server.stop()
