"""How many TLS handshakes a node sustains: cameras connect to one node's client port, say Hello, and stay.

Two rounds over the same cameras: ``full`` (no session yet: certificates
sent and checked both ways) and ``resumed`` (each camera offers the session
the node gave it in the first round).  In each round ``--cameras`` cameras
connect, at most ``--concurrency`` handshakes in flight, and stay connected
until all are done (TLS 1.3 sends the session tickets after the handshake: a
camera that left at once would have none); then all close.  Per round: the
handshakes done, how many resumed, the wall time, and the CPU the node
(``--node-pid``) and this process spent, per handshake.  The node's capacity
is ``per_node_cpu_s``: handshakes per CPU-second of the node.

    python benchmarks/handshakes.py --node 127.0.0.1:7201 --node-pid PID --pki run/bench-pki --cameras 2000

Prints one JSON line.  Loopback only; every wait is bounded (``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.internet.interfaces import IHandshakeListener  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402
from zope.interface import implementer  # noqa: E402

from parkd.config import parse_address  # noqa: E402
from parkd.startup import raise_file_limit  # noqa: E402
from parkd.proto import parkd_pb2 as pb  # noqa: E402
from parkd.trust.fleet import CameraFleet  # noqa: E402
from parkd.wire import frame_envelope  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@implementer(IHandshakeListener)
class _Camera(Protocol):
    """Says Hello once the handshake is done, then waits to be closed."""

    def __init__(self, run: Round, camera_id: int):
        self.run, self.camera_id = run, camera_id

    def handshakeCompleted(self):
        self.transport.write(frame_envelope(pb.Envelope(hello=pb.Hello(camera_id=self.camera_id, lot="north"))))
        self.run.handshaken(self)

    def connectionLost(self, reason):
        self.run.lost(self)


class Round:
    """One round: every camera connects once (``concurrency`` handshakes at a time)."""

    def __init__(self, reactor, endpoints: dict[int, object], concurrency: int, node_pid: int):
        self.reactor, self.endpoints, self.concurrency, self.node_pid = reactor, endpoints, concurrency, node_pid
        self.waiting = list(endpoints)
        self.in_flight = 0
        self.open: list[_Camera] = []
        self.resumed = self.failed = 0
        self.on_done = None
        self.on_closed = None

    def start(self, on_done) -> None:
        self.on_done = on_done
        self.started, self.cpu = time.monotonic(), (cpu_seconds(self.node_pid), time.process_time())
        self.rss_before = rss_mb(self.node_pid)
        self._more()

    def _more(self) -> None:
        while self.waiting and self.in_flight < self.concurrency:
            camera_id = self.waiting.pop()
            self.in_flight += 1
            connectProtocol(self.endpoints[camera_id], _Camera(self, camera_id)).addErrback(self._failed)

    def _failed(self, _failure) -> None:
        self.in_flight -= 1
        self.failed += 1
        self._more()
        self._maybe_done()

    def handshaken(self, camera: _Camera) -> None:
        self.in_flight -= 1
        self.resumed += bool(camera.transport.resumed)
        self.open.append(camera)
        self._more()
        self._maybe_done()

    def lost(self, camera: _Camera) -> None:
        if camera in self.open:
            self.open.remove(camera)
            if self.on_closed is not None and not self.open:
                self.on_closed()
        elif self.in_flight > 0:  # closed during its handshake: refused
            self._failed(None)

    def _maybe_done(self) -> None:
        if self.waiting or self.in_flight or self.on_done is None:
            return
        seconds = time.monotonic() - self.started
        node_cpu, own_cpu = cpu_seconds(self.node_pid) - self.cpu[0], time.process_time() - self.cpu[1]
        done, self.on_done = self.on_done, None
        n = len(self.open)
        done({"handshakes": n, "resumed": self.resumed, "failed": self.failed, "seconds": round(seconds, 2),
              "per_s": round(n / seconds, 1), "node_cpu_ms": round(node_cpu * 1000 / max(n, 1), 2),
              "per_node_cpu_s": round(n / node_cpu, 1) if node_cpu else None,
              "client_cpu_ms": round(own_cpu * 1000 / max(n, 1), 2), "node_rss_mb": round(rss_mb(self.node_pid), 1),
              "node_rss_per_connection_kb": round((rss_mb(self.node_pid) - self.rss_before) * 1024 / max(n, 1), 1)})  # fmt: skip

    def close(self, on_closed) -> None:
        """Close every connection; ``on_closed()`` once all are (their sessions kept for the next round)."""
        if not self.open:
            on_closed()
            return
        self.on_closed = on_closed
        for camera in list(self.open):
            camera.transport.loseConnection()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", required=True, help="the node's client address HOST:PORT (loopback)")
    parser.add_argument("--node-pid", type=int, required=True)
    parser.add_argument("--pki", required=True)
    parser.add_argument("--cameras", type=int, default=2000)
    parser.add_argument("--first-camera", type=int, default=100000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    address = parse_address(args.node, "--node")
    if not address.host.startswith("127."):
        parser.error("--node must be a loopback address")
    from twisted.internet import reactor

    raise_file_limit()
    fleet = CameraFleet(args.pki, range(args.first_camera, args.first_camera + args.cameras))
    endpoints = {i: fleet.camera(i).client_endpoint(TCP4ClientEndpoint(reactor, address.host, address.port, timeout=10),
                                                    f"node at {address}", expect="node")
                 for i in range(args.first_camera, args.first_camera + args.cameras)}  # fmt: skip
    result: dict = {}
    rounds = [("full", Round(reactor, endpoints, args.concurrency, args.node_pid)),
              ("resumed", Round(reactor, endpoints, args.concurrency, args.node_pid))]  # fmt: skip

    def next_round():
        if not rounds:
            reactor.stop()
            return
        name, run = rounds.pop(0)

        def done(figures):
            result[name] = figures
            reactor.callLater(1.0, run.close, next_round)  # let the last tickets arrive, then close all

        run.start(done)

    def give_up():
        result["error"] = f"not done within {args.timeout:g} s"
        reactor.stop()

    reactor.callWhenRunning(next_round)
    deadline = reactor.callLater(args.timeout, give_up)
    reactor.run()
    if deadline.active():
        deadline.cancel()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
