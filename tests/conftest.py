import os

import pytest

from parkd.config import load_config
from parkd.launcher import write_config


@pytest.fixture
def cluster_config(tmp_path):
    """A 3-node loopback config with fresh ports: (path, Config)."""
    path = write_config(str(tmp_path / "parkd.toml"), nodes=3, lots={"north": 100, "south": 60})
    return path, load_config(path)


@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    return str(path)


def pytest_collection_modifyitems(items):
    # Process tests start real daemons; run them after the fast unit tests.
    items.sort(key=lambda item: "process" in item.keywords)


os.environ.setdefault("PYTHONUNBUFFERED", "1")

