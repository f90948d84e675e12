"""Many cameras in one process (the load generator's CameraFleet), and the HandshakeGate that paces handshakes.

The fleet's connections are real TLS on 127.0.0.1 against a node's Trust: each
camera must present its own certificate, as a camera daemon does.
"""

import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory

from parkd.trust import Identity, Trust, TrustError, pki
from parkd.trust.fleet import CameraFleet
from parkd.trust.gate import HandshakeGate

from test_tls import Tell, ask, logs, ports, tcp  # noqa: F401  (logs and ports are fixtures)


async def listen_tell(trust: Trust, budget: float | None = None):
    factory = trust.server(Factory.forProtocol(Tell), "test port")
    if budget is not None:
        factory.gate.budget = budget
    from twisted.internet.endpoints import serverFromString

    return factory, await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)


# ------------------------------------------------------------------ the fleet


@pytest_twisted.ensureDeferred
async def test_each_camera_of_a_fleet_presents_its_own_certificate(cluster_pki, ports, logs):
    _, port = await listen_tell(Trust(cluster_pki.files("node-1")))
    ports.append(port)
    fleet = CameraFleet(cluster_pki.dir, range(5, 9))
    for camera_id in (5, 8, 6):
        camera = fleet.camera(camera_id)
        assert camera.identity == Identity("camera", camera_id)
        protocol, answer = await ask(camera.client_endpoint(tcp(port), "node", expect="node"))
        assert answer == f"you are camera-{camera_id}; resumed False"
        protocol.transport.loseConnection()
        await protocol.closed
    assert logs.matching("failed") == []


@pytest_twisted.ensureDeferred
async def test_a_fleet_camera_resumes_its_own_session_with_a_node(cluster_pki, ports):
    _, port = await listen_tell(Trust(cluster_pki.files("node-1")))
    ports.append(port)
    fleet = CameraFleet(cluster_pki.dir, [11, 12])
    endpoints = {i: fleet.camera(i).client_endpoint(tcp(port), "node", expect="node") for i in (11, 12)}
    for i, expected in ((11, False), (12, False), (11, True), (12, True)):
        protocol, answer = await ask(endpoints[i])
        assert answer == f"you are camera-{i}; resumed {expected}"
        protocol.transport.loseConnection()
        await protocol.closed


def test_a_fleet_refuses_files_that_do_not_name_their_camera(cluster_pki, tmp_path):
    with pytest.raises(TrustError, match=r"camera-101.pem: No such file"):
        CameraFleet(cluster_pki.dir, [100, 101])
    with pytest.raises(TrustError, match=r"camera-998.pem: expired on"):
        CameraFleet(cluster_pki.dir, [998])
    d = str(tmp_path / "pki")
    pki.init(d)
    pki.issue(d, [Identity("camera", 1)])
    for ext in ("pem", "key"):
        shutil.copy(os.path.join(d, f"camera-1.{ext}"), os.path.join(d, f"camera-2.{ext}"))
    with pytest.raises(TrustError, match=r"camera-2.pem: is camera-1's certificate, expected camera-2's"):
        CameraFleet(d, [2])


# ------------------------------------------------------------------ the gate


class Turns:
    """A reactor's turns for the gate: ``callLater(0, f)`` runs at the start of the next ``turn()``."""

    def __init__(self):
        self.pending, self.count = [], 0

    def callLater(self, delay, f, *args):
        self.pending.append((f, args))
        return f  # (the gate only keeps it)

    def turn(self):
        self.count += 1
        pending, self.pending = self.pending, []
        for f, args in pending:
            f(*args)


class Waiter:
    """A protocol as the gate sees it: each step takes ``took`` seconds."""

    def __init__(self, gate, name, took):
        self.gate, self.name, self.took, self.closed = gate, name, took, False
        self.turns = []

    def take_turn(self):
        self.turns.append(self.gate.clock.count)
        self.gate.ran(self.took)


def through(waiter: Waiter, continuing: bool, order: list) -> None:
    """What GuardedTLSProtocol does with a step: run it now if admitted, else wait."""
    if waiter.gate.admit(continuing):
        order.append(waiter.name)
        waiter.gate.ran(waiter.took)
    else:
        waiter.gate.wait(waiter, continuing)


def test_the_gate_runs_a_turns_budget_of_steps_and_the_rest_in_later_turns_continuing_ones_first():
    turns, order = Turns(), []
    gate = HandshakeGate(turns, budget=0.05)
    for i in range(3):
        through(Waiter(gate, f"new{i}", took=0.02), False, order)
    assert order == ["new0", "new1", "new2"]  # 0.06 s spent: the budget is gone for this turn
    late = [Waiter(gate, f"late{i}", took=0.05) for i in range(3)]
    for waiter in late:
        through(waiter, False, order)
    going_on = Waiter(gate, "going on", took=0.05)
    through(going_on, True, order)
    late[1].closed = True  # its deadline ran out while it waited
    assert gate.waited == 4 and order == ["new0", "new1", "new2"]
    for _ in range(4):
        turns.turn()  # one 0.05 s step fits in each
    assert (going_on.turns, late[0].turns, late[1].turns, late[2].turns) == ([1], [2], [], [3])
    through(last := Waiter(gate, "last", took=0.01), False, order)
    assert order[-1] == "last" and not last.turns  # nothing waits any more: admitted at once


def test_a_gate_needs_a_positive_budget():
    with pytest.raises(ValueError):
        HandshakeGate(Turns(), budget=0)


@pytest_twisted.ensureDeferred
async def test_handshakes_that_wait_for_the_gate_all_finish_with_the_right_identities(cluster_pki, ports, logs):
    factory, port = await listen_tell(Trust(cluster_pki.files("node-1")), budget=1e-9)  # one step per turn
    ports.append(port)
    fleet = CameraFleet(cluster_pki.dir, range(20, 32))
    fleet.gate.budget = 1e-9  # the clients' side too
    asked = [ask(fleet.camera(i).client_endpoint(tcp(port), "node", expect="node")) for i in range(20, 32)]
    results = await defer.gatherResults([defer.ensureDeferred(a) for a in asked])
    assert [answer for _, answer in results] == [f"you are camera-{i}; resumed False" for i in range(20, 32)]
    assert factory.gate.waited > 0 and fleet.gate.waited > 0
    for protocol, _ in results:
        protocol.transport.loseConnection()
    assert logs.matching("failed") == []
