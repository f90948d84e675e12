import pytest
from twisted.logger import LogLevel, globalLogPublisher

from httpnode import FakeNode
from harness import Cluster


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


@pytest.fixture(scope="module")
def live_cluster(tmp_path_factory, cluster_pki):
    """3 real nodes over TLS and a camera per lot (frames every 0.1 s), shared by a module's tests."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), interval=0.1, pki=cluster_pki.dir)
    try:
        cluster.start_nodes()
        for camera_id, lot in enumerate(("north", "south", "east"), start=1):
            cluster.add_camera(camera_id, lot)
        cluster.leader()
        cluster.wait_acks(9)
        yield cluster
    finally:
        cluster.stop_all()
