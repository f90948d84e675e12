import pytest
from twisted.logger import LogLevel, globalLogPublisher

from httpnode import FakeNode


@pytest.fixture
def node():
    node = FakeNode()
    yield node
    node.engine.dispose()


@pytest.fixture
def logged_errors():
    """The error and critical twisted.logger events published during the test
    (``log.failure`` logs at critical)."""
    errors = []

    def observe(event):
        if event.get("log_level", LogLevel.info) >= LogLevel.error:
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)


def process_harness():
    """tests/process/conftest.py as a module (its Cluster class), loaded once."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "parkd_process_harness"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "process" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture(scope="module")
def live_cluster(tmp_path_factory, cluster_pki):
    """3 real nodes over TLS and a camera per lot (frames every 0.1 s), shared by a module's tests."""
    harness = process_harness()
    cluster = harness.Cluster(tmp_path_factory.mktemp("cluster"), interval=0.1, pki=cluster_pki.dir)
    try:
        cluster.start_nodes()
        for camera_id, lot in enumerate(("north", "south", "east"), start=1):
            cluster.add_camera(camera_id, lot)
        cluster.leader()
        cluster.wait_acks(9)
        yield cluster
    finally:
        cluster.stop_all()
