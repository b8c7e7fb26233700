"""torua.eventloop: processes run on uvloop by default, on asyncio's loop when asked."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from torua import eventloop
from torua.errors import ConfigError
from torua.settings import BaseServiceSettings, load_settings


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_run_uses_uvloop_by_default() -> None:
    assert eventloop.run(_loop_type()) is uvloop.Loop


def test_run_on_asyncio_when_asked() -> None:
    assert not issubclass(eventloop.run(_loop_type(), "asyncio"), uvloop.Loop)


def test_new_event_loop_follows_the_choice() -> None:
    for choice, is_uv in (("uvloop", True), ("asyncio", False)):
        loop = eventloop.new_event_loop(choice)
        try:
            assert isinstance(loop, uvloop.Loop) is is_uv
        finally:
            loop.close()


def test_the_setting_accepts_only_known_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORUA_EVENT_LOOP", "asyncio")
    assert load_settings(BaseServiceSettings).event_loop == "asyncio"
    monkeypatch.setenv("TORUA_EVENT_LOOP", "trio")
    with pytest.raises(ConfigError, match="TORUA_EVENT_LOOP"):
        load_settings(BaseServiceSettings)
