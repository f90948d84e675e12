import pytest

from httpnode import FakeNode


@pytest.fixture
def node():
    node = FakeNode()
    yield node
    node.engine.dispose()
