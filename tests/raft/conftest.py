"""Fixtures shared by the Raft tests."""

import pytest

from parkd.raft.storage import MemoryStorage, SqliteStorage


@pytest.fixture(params=["memory", "sqlite-memory", "sqlite-file"])
def storage(request, tmp_path):
    if request.param == "memory":
        s = MemoryStorage()
    elif request.param == "sqlite-memory":
        s = SqliteStorage.open("sqlite://")
    else:
        s = SqliteStorage.open(str(tmp_path / "node.db"))
    yield s
    s.close()
