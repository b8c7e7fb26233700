"""The same NATS fixture, from the official image via testcontainers, where a Docker engine answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from torua.connect import connect

from tests.conftest import docker_available



pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="no Docker engine answers here"),
]


@pytest.fixture
def nats_container_url() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222)
    with container:
        wait_for_logs(container, "Server is ready", timeout=30)
        yield f"nats://{container.get_container_host_ip()}:{container.get_exposed_port(4222)}"


async def test_jetstream_kv_roundtrip_in_container(nats_container_url: str) -> None:
    nc = await connect(nats_container_url, name="test", timeout=10)
    try:
        kv = await nc.jetstream().create_key_value(bucket="probe")
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
    finally:
        await nc.close()
