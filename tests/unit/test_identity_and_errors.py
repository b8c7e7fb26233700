from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from torua.endpoints import decode_request, error_reply
from torua.errors import BadRequest, NotFound, Unavailable, error_for_code
from torua.hashing import shard_for, stable_hash
from torua.wire import BroadcastRequest

from torua_node.node.identity import load_identity


def test_generated_id_is_kept_and_incarnation_grows(tmp_path: Path) -> None:
    first = load_identity(tmp_path, None)
    second = load_identity(tmp_path, None)
    assert first.node_id == second.node_id and first.node_id.startswith("n-")
    assert second.incarnation > first.incarnation
    assert load_identity(tmp_path, "node-x").node_id == "node-x"


def test_error_reply_shape() -> None:
    body, headers = error_reply(400, "bad\nthing")
    assert msgspec.json.decode(body) == {"error": {"code": 400, "description": "bad\nthing"}}
    assert headers == {"Nats-Service-Error-Code": "400", "Nats-Service-Error": "bad thing"}


def test_error_codes_map_to_exceptions() -> None:
    assert isinstance(error_for_code(404, "x"), NotFound)
    assert isinstance(error_for_code(503, "x"), Unavailable)
    assert error_for_code(422, "x").code == 422


@pytest.mark.parametrize("data,needle", [(b"{", "JSON"), (b'{"op": 1}', "$.op"), (b'{"op": "a", "x": 1}', "x")])
def test_decode_request_names_the_problem(data: bytes, needle: str) -> None:
    with pytest.raises(BadRequest, match=None) as info:
        decode_request(data, BroadcastRequest)
    assert needle in info.value.description


def test_stable_hash_is_stable() -> None:
    # Pinned values: changing the hash would move every id to another shard.
    assert stable_hash("entity-1") == stable_hash("entity-1")
    assert shard_for("entity-1", 8) == stable_hash("entity-1") % 8
    assert stable_hash("") == 0xEF46DB3751D8E999


@pytest.mark.parametrize("depth", [10, 200, 5_000, 100_000])
def test_json_of_any_nesting_depth_decodes_or_is_a_400(depth: int) -> None:
    from torua.model import QueryRequest

    data = b'{"cypher": "RETURN 1", "params": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    try:
        req = decode_request(data, QueryRequest)
    except BadRequest as exc:
        assert exc.code == 400 and "deep" in exc.description
        assert depth >= 1000  # only beyond what Python can hold
    else:
        assert depth < 1000 and req.cypher == "RETURN 1"
