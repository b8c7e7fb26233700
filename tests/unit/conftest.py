from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SCRATCH_DIR
from torua_node.shard import apply as apply_mod
from torua_node.storage import statements


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """pytest's `tmp_path`, moved to /dev/shm when there (tests.conftest.SCRATCH_DIR): unit tests
    build many small Kuzu databases whose checkpoint fsyncs cost more than the work on a busy disk.
    Removed after the test; TORUA_TEST_TMPFS=0 keeps pytest's own (kept after failures)."""
    if SCRATCH_DIR is None:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="torua-unit-", dir=SCRATCH_DIR))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["set-at-a-time", "row-by-row"])
def statement_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a statement runs over rows (`statements.run`) must give the same results."""
    if request.param == "row-by-row":
        monkeypatch.setattr(statements, "KEYS_PER_ROW", 0)
    return request.param


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid entries must go through apply's bulk path: the entry-by-entry fallback would hide bugs
    (test_apply, test_convergence)."""

    def boom(*a: Any) -> None:
        raise AssertionError("batch transaction failed and fell back to entry-by-entry apply")

    monkeypatch.setattr(apply_mod, "_apply_one_by_one", boom)
