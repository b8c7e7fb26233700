"""The container deployment, checked three ways.

1. docker-compose.yml as a real compose implementation resolves it (`docker-compose config`), and
   the Dockerfile and NATS configs it relies on.
2. The compose wiring, without a Docker engine: every default-profile service's command runs as a
   local process with its compose environment (interpolated with the file's defaults), compose
   host names mapped to loopback, a real nats-server in place of the `nats` container, one data dir
   per node as each container's anonymous /data volume would be. The cluster must reach green, the
   compose health checks must pass, and the compose stop signal must stop every service within its
   stop_grace_period.
3. Where a Docker engine answers, the image is built and run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from torua.client import Client
from torua.model import Entity, Relation
from torua.natsserver import MAX_PAYLOAD, NatsServer, find_nats_server, start_nats_server
from torua.settings import BaseServiceSettings, load_settings

from torua_coordinator.settings import CoordinatorSettings
from torua_node.settings import NodeSettings

from tests.conftest import docker_available, wait_for

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
HEALTHCHECK_SCRIPT = ROOT / "deploy" / "healthcheck.py"
CLUSTER_ENV = ROOT / "deploy" / "cluster.env"
NATS_CONFIGS = ROOT / "deploy" / "nats"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

TORUA_SERVICES = {"coordinator": CoordinatorSettings, "node": NodeSettings}
NATS_SERVICES = {"nats", "nats-2", "nats-3"}
# A node stops within this long after SIGTERM (docs/operations.md, tests/integration/test_restarts.py).
NODE_STOP_S = 10
# How the image runs a service (Dockerfile ENTRYPOINT ["torua"]), as a local command: the same
# entry point the `torua` console script calls.
TORUA_ENTRYPOINT = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'torua'; from torua.cli import main; main()",
]
# What the image installs deploy/healthcheck.py as.
HEALTHCHECK_COMMAND = "torua-healthcheck"


# --- reading the compose file -----------------------------------------------------------------


def _yaml() -> Any:
    return pytest.importorskip(
        "yaml", reason="PyYAML is not installed: it must be in the test extras to read docker-compose.yml"
    )


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?", re.DOTALL)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$."""

    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        b = _BRACED.fullmatch(m["braced"])
        assert b is not None, f"unsupported substitution ${{{m['braced']}}}"
        name, op, arg = b["name"], b["op"], b["arg"]
        val = env.get(name)
        unset = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":-", "-"):
            return arg if unset else val  # type: ignore[return-value]
        if op in (":?", "?"):
            if unset:
                raise ValueError(f"{name}: {arg}")
            return val  # type: ignore[return-value]
        return val or ""

    return _VAR.sub(sub, value)


def _interpolate_all(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_all(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_all(v, env) for k, v in node.items()}
    return node


def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def compose_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml parsed (anchors and merge keys resolved) and interpolated with `env`."""
    raw = _yaml().safe_load(COMPOSE_FILE.read_text())
    return _interpolate_all(raw, env or {})


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def anonymous_volumes(service: Mapping[str, Any]) -> list[str]:
    """Container paths of anonymous volumes, in the short (`- /data`) or long syntax."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            if ":" not in v:
                out.append(v)
        elif v.get("type", "volume") == "volume" and not v.get("source"):
            out.append(v["target"])
    return out


def duration_s(value: str | float) -> float:
    """A compose duration ("1m30s", "10s", "500ms") in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _clean_env(**extra: str) -> dict[str, str]:
    """A process environment without the runner's NATS_URL/TORUA_*/COMPOSE_* settings."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, **extra}


def check_structure(cfg: Mapping[str, Any], *, nats_replicas: str, nats_url_hosts: set[str]) -> None:
    """What docs/deployment.md promises, on a resolved configuration."""
    services = cfg["services"]
    assert set(services) == NATS_SERVICES | set(TORUA_SERVICES), sorted(services)
    assert not services["nats"].get("profiles"), "the single NATS server is always on"
    for name in ("nats-2", "nats-3"):
        assert services[name].get("profiles") == ["cluster"], name
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
    for name in NATS_SERVICES:
        assert services[name]["image"].startswith("nats:2.11"), services[name]["image"]
        assert "--jetstream" in services[name]["command"] or "-js" in services[name]["command"], name
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"]), name
        # The JetStream store is a named volume.
        targets = {
            (v if isinstance(v, str) else f"{v.get('source')}:{v['target']}")
            for v in services[name]["volumes"]
        }
        assert any(t.startswith(f"{name}-data:/data") for t in targets), (name, targets)
    assert {"nats-data", "nats-2-data", "nats-3-data"} <= set(cfg["volumes"])

    node = services["node"]
    assert "container_name" not in node and "ports" not in node, (
        "node must scale: no fixed name or host ports"
    )
    assert anonymous_volumes(node) == ["/data"], node.get("volumes")
    assert "TORUA_NODE_ID" not in environment_of(node), "ids come from each node's own volume"
    assert environment_of(node)["TORUA_DATA_DIR"] == "/data"
    for name in TORUA_SERVICES:
        svc = services[name]
        assert svc["command"] == [name]
        assert svc["healthcheck"]["test"] == ["CMD", HEALTHCHECK_COMMAND, name]
        deps = svc["depends_on"]
        assert all(d["condition"] == "service_healthy" for d in deps.values()), deps
        url_hosts = set(re.findall(r"nats://([\w.-]+):4222", environment_of(svc)["NATS_URL"]))
        assert url_hosts == nats_url_hosts, environment_of(svc)["NATS_URL"]
    assert "nats" in services["coordinator"]["depends_on"]
    assert set(services["node"]["depends_on"]) == {"nats", "coordinator"}
    assert environment_of(services["coordinator"])["TORUA_NATS_REPLICAS"] == nats_replicas
    # SIGTERM stops a node gracefully, keeping its data, within NODE_STOP_S: the runtime must wait longer.
    assert node["stop_signal"] == "SIGTERM"
    assert duration_s(node["stop_grace_period"]) >= NODE_STOP_S + 5, node["stop_grace_period"]


# --- 1. the files, statically and with docker-compose ----------------------------------------------


def test_compose_file_structure_and_defaults() -> None:
    check_structure(compose_config(), nats_replicas="1", nats_url_hosts={"nats"})
    cluster = compose_config(_read_env_file(CLUSTER_ENV))
    check_structure(cluster, nats_replicas="3", nats_url_hosts={"nats-1", "nats-2", "nats-3"})
    assert _read_env_file(CLUSTER_ENV)["COMPOSE_PROFILES"] == "cluster"
    for name in NATS_SERVICES:
        assert cluster["services"][name]["command"][:2] == ["--config", "/etc/nats/torua/cluster.conf"], name
    assert compose_config()["services"]["nats"]["command"][:2] == ["--config", "/etc/nats/torua/single.conf"]
    # The Torua settings' own validation accepts every compose default (a wrong one would stop the
    # container at start, naming the variable), in both modes.
    for cfg in (compose_config(), cluster):
        for name, cls in TORUA_SERVICES.items():
            env = environment_of(cfg["services"][name])
            with pytest.MonkeyPatch.context() as mp:
                for k in list(os.environ):
                    if k.startswith("TORUA_") or k == "NATS_URL":
                        mp.delenv(k)
                for k, v in env.items():
                    mp.setenv(k, v)
                settings = load_settings(cls)
            assert settings.nats_url == env["NATS_URL"]


def _settings_env_names(cls: type[BaseServiceSettings]) -> set[str]:
    """The variable each setting is read from: its alias (NATS_URL), else TORUA_<FIELD>."""
    prefix = cls.model_config.get("env_prefix", "")
    return {
        info.validation_alias if isinstance(info.validation_alias, str) else f"{prefix}{field}".upper()
        for field, info in cls.model_fields.items()
    }


def test_compose_environment_names_real_settings_and_every_setting_is_documented() -> None:
    """Settings ignore unknown variables, so a misspelt name in the compose file would be silently lost."""
    services = compose_config()["services"]
    for name, cls in TORUA_SERVICES.items():
        unknown = set(environment_of(services[name])) - _settings_env_names(cls)
        assert not unknown, f"{name}: {sorted(unknown)} are not {cls.__name__} settings"
    doc = DEPLOYMENT_DOC.read_text()
    for cls in TORUA_SERVICES.values():
        missing = sorted(n for n in _settings_env_names(cls) if f"`{n}`" not in doc)
        assert not missing, f"{DEPLOYMENT_DOC.relative_to(ROOT)} does not document {missing}"


def test_dockerfile_runs_torua_as_non_root_with_data_volume() -> None:
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    final = instructions[max(i for i, line in enumerate(instructions) if line.startswith("FROM ")) :]
    assert final[0] == "FROM python:3.11-slim"
    by_kind: dict[str, list[str]] = {}
    for line in final:
        kind, _, rest = line.partition(" ")
        by_kind.setdefault(kind, []).append(rest.strip())
    assert by_kind["ENTRYPOINT"] == ['["torua"]'], "the wiring test runs services as `torua <command>`"
    assert by_kind["CMD"] == ['["node"]']
    assert by_kind["USER"][-1].split(":")[0] not in ("root", "0")
    assert by_kind["VOLUME"] == ['["/data"]']
    assert by_kind["STOPSIGNAL"] == ["SIGTERM"]
    assert any(HEALTHCHECK_COMMAND in h for h in by_kind["HEALTHCHECK"])
    assert f"deploy/healthcheck.py /usr/local/bin/{HEALTHCHECK_COMMAND}" in by_kind["COPY"]
    pip_lines = [line for line in instructions if "pip install" in line]
    assert pip_lines and not any("[" in line for line in pip_lines), f"no extras in the image: {pip_lines}"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!deploy/healthcheck.py" in ignored


@pytest.mark.parametrize("conf", ["single.conf", "cluster.conf"])
def test_nats_configs_are_valid_for_nats_server(conf: str) -> None:
    proc = subprocess.run(
        [find_nats_server(), "-c", str(NATS_CONFIGS / conf), "-t"],
        env=_clean_env(NATS_SERVER_NAME="nats-1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    text = (NATS_CONFIGS / conf).read_text()
    assert f"max_payload: {MAX_PAYLOAD // (1024 * 1024)}MB" in text, "same payload limit as `torua up`"


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip(
            "docker-compose is not installed (CI installs Debian's docker-compose 1.29 with apt: .ci/run)"
        )
    return exe


@pytest.mark.parametrize("mode", ["single", "cluster"])
def test_docker_compose_config_resolves_the_file(mode: str, tmp_path: Path) -> None:
    exe = _docker_compose()
    # An explicit env file, so a developer's own .env beside the compose file does not count here.
    no_env = tmp_path / "empty.env"
    no_env.write_text("")
    args = [exe, "-f", str(COMPOSE_FILE), "--env-file", str(CLUSTER_ENV if mode == "cluster" else no_env)]
    proc = subprocess.run(
        args + ["config"], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr  # e.g. a variable without a default
    resolved = _yaml().safe_load(proc.stdout)
    if mode == "single":
        check_structure(resolved, nats_replicas="1", nats_url_hosts={"nats"})
        ours = compose_config()
    else:
        check_structure(resolved, nats_replicas="3", nats_url_hosts={"nats-1", "nats-2", "nats-3"})
        ours = compose_config(_read_env_file(CLUSTER_ENV))
    # The interpolation the wiring test relies on agrees with a real compose implementation.
    for name in resolved["services"]:
        assert environment_of(resolved["services"][name]) == environment_of(ours["services"][name]), name
        assert resolved["services"][name].get("command") == ours["services"][name].get("command"), name


# --- 2. the compose wiring as local processes ----------------------------------------------------


async def exercise_data_plane(client: Client) -> None:
    """What a compose-wired cluster answers once green: every shard fully replicated, a write and
    a read through any node's router, and the key-value store."""
    info = await client.cluster_info()
    assert info.state == "green", info
    assert info.shards.unassigned == 0 and info.shards.initializing == 0, info.shards
    assert info.shards.active == info.shards.total * info.shards.replication_factor, info.shards
    reply = await client.upsert(
        entities=[Entity(id="compose-a", name="A"), Entity(id="compose-b", name="B")],
        relations=[Relation(source="compose-a", target="compose-b", type="LINKS")],
    )
    assert (await client.get("compose-a", after=reply.tokens)).entity.name == "A"
    around = await client.neighbors(["compose-b"], direction="in", after=reply.tokens)
    assert [e.source for e in around.edges] == ["compose-a"]
    put = await client.kv_put("compose/key", "value ✓")
    assert await client.kv_get("compose/key", after=put.token) == "value ✓"


class ComposeProcesses:
    """Services of the compose file run as local processes, as the containers would run them."""

    def __init__(self, cfg: Mapping[str, Any], nats: NatsServer, workdir: Path) -> None:
        self.services = cfg["services"]
        self.workdir = workdir
        # Compose DNS: every NATS service name and alias resolves to the one local server.
        self.hosts: dict[tuple[str, int], str] = {}
        for name in NATS_SERVICES:
            for alias in [
                name,
                *self.services[name].get("networks", {}).get("default", {}).get("aliases", []),
            ]:
                self.hosts[(alias, 4222)] = nats.url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.envs: dict[str, dict[str, str]] = {}

    def _map_hosts(self, value: str) -> str:
        def sub(m: re.Match[str]) -> str:
            key = (m["host"], int(m["port"]))
            assert key in self.hosts, f"{m[0]} names no compose service"
            return self.hosts[key]

        return re.sub(r"nats://(?P<host>[\w.-]+):(?P<port>\d+)", sub, value)

    def env_for(self, service: str, replica: str) -> dict[str, str]:
        svc = self.services[service]
        env = {k: self._map_hosts(v) for k, v in environment_of(svc).items()}
        # Each container gets its own anonymous volume: here, a directory per replica.
        for target in anonymous_volumes(svc):
            local = self.workdir / replica / target.strip("/")
            local.mkdir(parents=True, exist_ok=True)
            env = {
                k: str(local) + v[len(target) :] if v == target or v.startswith(target + "/") else v
                for k, v in env.items()
            }
        return _clean_env(PYTHONUNBUFFERED="1", **env)

    def start(self, service: str, replica: str) -> subprocess.Popen[bytes]:
        env = self.env_for(service, replica)
        command = self.services[service]["command"]
        with open(self.workdir / f"{replica}.log", "ab") as log:
            proc = subprocess.Popen(
                [*TORUA_ENTRYPOINT, *command],
                env=env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[replica], self.envs[replica] = proc, env
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {r} (exit {p.poll()}):\n" + (self.workdir / f"{r}.log").read_text(errors="replace")[-3000:]
            for r, p in self.procs.items()
        )

    async def wait_for(self, probe: Any, *, timeout: float, what: str) -> Any:
        """tests.conftest.wait_for, failing with the services' logs."""
        try:
            return await wait_for(probe, timeout=timeout, what=what)
        except pytest.fail.Exception as exc:
            pytest.fail(f"{exc.msg}\n{self.logs()}")

    def assert_running(self) -> None:
        dead = [r for r, p in self.procs.items() if p.poll() is not None]
        if dead:
            pytest.fail(f"{dead} exited\n{self.logs()}")

    async def healthcheck(
        self, service: str, replica: str, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Run the service's compose health check command, as the runtime would inside the container."""
        hc = self.services[service]["healthcheck"]
        test = hc["test"]
        assert test[0] == "CMD" and test[1] == HEALTHCHECK_COMMAND, test
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HEALTHCHECK_SCRIPT),
            *test[2:],
            env=env or self.envs[replica],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), duration_s(hc["timeout"]))
        return proc.returncode or 0, out.decode().strip()

    async def stop(self, service: str) -> None:
        """As `docker compose stop` does: the stop signal, then a kill after stop_grace_period."""
        svc = self.services[service]
        sig = getattr(signal, svc.get("stop_signal", "SIGTERM"))
        grace = duration_s(svc.get("stop_grace_period", "10s"))
        replicas = [r for r in self.procs if r == service or r.startswith(f"{service}-")]
        for r in replicas:
            self.procs[r].send_signal(sig)
        for r in replicas:
            try:
                code = await asyncio.to_thread(self.procs[r].wait, grace)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"{r} did not stop within stop_grace_period {grace:g}s after {sig.name}\n{self.logs()}"
                )
            assert code == 0, f"{r} exited {code} after {sig.name}\n{self.logs()}"

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


async def test_compose_services_run_as_local_processes_reach_green(tmp_path: Path) -> None:
    cfg = compose_config()  # the file's own defaults, nothing from the runner's environment
    default_services = sorted(n for n, s in cfg["services"].items() if not s.get("profiles"))
    assert default_services == ["coordinator", "nats", "node"]
    nats = start_nats_server(tmp_path / "nats")  # stands in for the nats container, on a random port
    compose = ComposeProcesses(cfg, nats, tmp_path)
    try:
        # depends_on order: coordinator first, then two replicas of the scalable node service.
        compose.start("coordinator", "coordinator")
        async with await Client.connect(nats.url, request_timeout=5.0) as client:
            await compose.wait_for(
                lambda: _healthy(compose, "coordinator", "coordinator"),
                timeout=30,
                what="the coordinator health check",
            )
            compose.start("node", "node-1")
            compose.start("node", "node-2")

            async def green_with_two() -> bool:
                compose.assert_running()
                info = await client.cluster_info()
                return info.state == "green" and info.nodes.healthy == 2

            await compose.wait_for(green_with_two, timeout=60, what="green with both nodes")
            # Each node took its identity from its own data dir (the container's /data volume).
            ids = {(tmp_path / r / "data" / "node_id").read_text().strip() for r in ("node-1", "node-2")}
            assert len(ids) == 2
            nodes = (await client.cluster_nodes()).nodes
            assert {n.id for n in nodes} == ids
            assert all(n.status == "healthy" and n.shards for n in nodes), nodes
            for r in ("node-1", "node-2"):
                await compose.wait_for(
                    lambda r=r: _healthy(compose, "node", r), timeout=20, what=f"{r} health check"
                )
            # ...and the node check is not vacuous: a node id nobody answers for is unhealthy.
            other = tmp_path / "other-node"
            other.mkdir()
            (other / "node_id").write_text("n-nobody\n")
            env = {**compose.envs["node-1"], "TORUA_DATA_DIR": str(other)}
            code, out = await compose.healthcheck("node", "node-1", env)
            assert code == 1 and "unhealthy" in out, out
            await exercise_data_plane(client)

        # `docker compose down` order: dependents first, each with its stop signal and grace period.
        await compose.stop("node")
        await compose.stop("coordinator")
    finally:
        compose.kill_all()
        nats.stop()


async def _healthy(compose: ComposeProcesses, service: str, replica: str) -> bool:
    compose.assert_running()
    code, _ = await compose.healthcheck(service, replica)
    return code == 0


# --- 3. the image, where a Docker engine answers ------------------------------------------------------



@pytest.mark.docker
@pytest.mark.timeout(900)
@pytest.mark.skipif(not docker_available(), reason="no Docker engine answers here")
def test_image_builds_and_runs_torua() -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.image import DockerImage

    with DockerImage(path=str(ROOT), tag="torua:compose-test") as image:
        config = image.get_wrapped_image().attrs["Config"]
        assert config["Entrypoint"] == ["torua"] and config["Cmd"] == ["node"]
        assert config["User"] not in ("", "root", "0", "0:0")
        assert "/data" in (config.get("Volumes") or {})
        assert config["Healthcheck"]["Test"] == ["CMD", HEALTHCHECK_COMMAND]
        with DockerContainer(str(image)).with_command("--help") as container:
            assert container.wait() == 0
            stdout, _ = container.get_logs()
        assert b"coordinator" in stdout and b"node" in stdout
        # A node without NATS fails fast with a readable reason, not a traceback.
        with DockerContainer(str(image)).with_env("NATS_URL", "nats://127.0.0.1:1") as container:
            assert container.wait() == 2
            _, stderr = container.get_logs()
        assert b"cannot connect to NATS" in stderr and b"Traceback" not in stderr
