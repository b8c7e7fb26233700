from __future__ import annotations

import os
import subprocess
import sys

import pytest

from torua.errors import ConfigError
from torua.settings import load_settings

from torua_coordinator.settings import CoordinatorSettings
from torua_node.settings import NodeSettings


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORUA_NUM_SHARDS", "many")
    with pytest.raises(ConfigError, match="TORUA_NUM_SHARDS"):
        load_settings(CoordinatorSettings)
    monkeypatch.setenv("TORUA_NUM_SHARDS", "8")
    monkeypatch.setenv("NATS_URL", "nats://example:4222")
    assert load_settings(CoordinatorSettings).nats_url == "nats://example:4222"


def test_node_id_must_be_a_subject_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORUA_NODE_ID", "has.dot")
    with pytest.raises(ConfigError, match="TORUA_NODE_ID"):
        load_settings(NodeSettings)


@pytest.mark.parametrize("module,var,value", [("torua_node", "TORUA_HEARTBEAT_INTERVAL", "soon"),
                                              ("torua_coordinator", "TORUA_REPLICATION_FACTOR", "0")])
def test_process_stops_at_start_naming_the_variable(module: str, var: str, value: str) -> None:
    env = {**os.environ, var: value}
    proc = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert var in proc.stderr
    assert "Traceback" not in proc.stderr
