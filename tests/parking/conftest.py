"""Fixtures shared by the parking tests: a state machine on an in-memory database."""

import pytest

from parkd.db import open_engine
from parkd.parking.state import ParkingState

LOTS = {"north": 100, "south": 60}


@pytest.fixture
def engine():
    engine = open_engine("sqlite://")
    yield engine
    engine.dispose()


@pytest.fixture
def state(engine):
    return ParkingState(engine, LOTS)
