from __future__ import annotations

import pytest

from torua_node.storage import statements


@pytest.fixture(params=["set-at-a-time", "row-by-row"])
def statement_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a statement runs over rows (`statements.run`) must give the same results."""
    if request.param == "row-by-row":
        monkeypatch.setattr(statements, "KEYS_PER_ROW", 0)
    return request.param
