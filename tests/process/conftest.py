"""Fixtures of the process tests: clusters of real twistd processes (see harness.py)."""

from __future__ import annotations

import pytest

from harness import Cluster


@pytest.fixture
def make_cluster(tmp_path, cluster_pki):
    """Build a Cluster (TLS with the session's test PKI unless ``tls=False``); every
    process it started is stopped (or killed) afterwards."""
    made = []

    def make(tls=True, **kwargs):
        cluster = Cluster(tmp_path, pki=cluster_pki.dir if tls else None, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.process)
