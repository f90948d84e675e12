"""What TLS adds to one message between two nodes, in Python: a ping-pong over loopback, TLS and plaintext.

Two endpoints in this process, connected over 127.0.0.1 through the nodes' own
layers (the length-prefixed framing of ``parkd/wire.py`` with its eager writes,
and for TLS the raft port's ``GuardedTLSProtocol``: mutual TLS 1.3 with the node
certificates of a PKI), bounce one 120-byte message back and forth
``--round-trips`` times.  Each round trip is two messages, each one ``send`` and one
read; with TLS, each is also one record sealed and one opened through pyOpenSSL.
Plaintext and TLS take turns for ``--rounds`` rounds; the medians give wall and CPU
time per message and what TLS adds to it.  (The reactor and both ends share one
core, so wall and CPU time agree.)

    python benchmarks/tls_message_cost.py [--round-trips 5000] [--rounds 3] [--pki DIR]

Without ``--pki`` it makes a small PKI in a temporary directory.  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint  # noqa: E402

from parkd.launcher import make_pki  # noqa: E402
from parkd.trust import Trust, TrustFiles, peer_identity  # noqa: E402
from parkd.wire import EnvelopeFactory, EnvelopeProtocol  # noqa: E402

MESSAGE = b"m" * 120  # about an AppendEntries of one frame result, or its answer


class Bounce(EnvelopeProtocol):
    """Sends back every message it receives; the side that started counts round trips."""

    remaining = 0  # round trips still to make (the starting side)
    finished: defer.Deferred | None = None

    def stringReceived(self, data: bytes) -> None:
        if self.finished is None:  # the answering side
            self.sendEncoded(data)
        elif self.remaining > 1:
            self.remaining -= 1
            self.sendEncoded(data)
        else:
            self.finished, finished = None, self.finished
            finished.callback(None)

    def start(self, round_trips: int) -> defer.Deferred:
        self.remaining, self.finished = round_trips, defer.Deferred()
        self.sendEncoded(MESSAGE)
        return self.finished


class BounceFactory(EnvelopeFactory):
    protocol = Bounce


async def one_round(pki: str | None, round_trips: int) -> dict:
    """Wall and CPU microseconds per message, TLS when ``pki`` is given."""
    server, client = BounceFactory(reactor), BounceFactory(reactor)
    listen = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    if pki:
        server = Trust(TrustFiles.in_pki(pki, "node-1")).server(server, "bench", allow=("node",))
    port = await listen.listen(server)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=10)
    if pki:
        endpoint = Trust(TrustFiles.in_pki(pki, "node-2")).client_endpoint(endpoint, "bench", expect="node")
    protocol = await endpoint.connect(client)
    try:
        await protocol.start(10)  # the handshake's last steps and warm caches
        peer = str(peer_identity(protocol.transport)) if pki else None  # node-1: the bytes went through TLS
        wall, cpu = time.perf_counter(), time.process_time()
        await protocol.start(round_trips)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        protocol.transport.loseConnection()
        await port.stopListening()
    messages = 2 * round_trips
    return {"wall_us": wall / messages * 1e6, "cpu_us": cpu / messages * 1e6, "peer": peer}


async def measure(pki: str, round_trips: int, rounds: int) -> dict:
    runs = {"plain": [], "tls": []}
    for _ in range(rounds):
        runs["plain"].append(await one_round(None, round_trips))
        runs["tls"].append(await one_round(pki, round_trips))
    result = {"round_trips": round_trips, "rounds": rounds, "tls_peer": runs["tls"][-1]["peer"]}
    for kind, figures in runs.items():
        for key in ("wall_us", "cpu_us"):
            result[f"{kind}_{key}_per_message"] = round(statistics.median(f[key] for f in figures), 2)
    result["tls_adds_cpu_us_per_message"] = round(result["tls_cpu_us_per_message"] - result["plain_cpu_us_per_message"], 2)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-trips", type=int, default=5000, help="round trips per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="plaintext/TLS rounds, taking turns (default 3)")
    parser.add_argument("--pki", help="a PKI with node-1 and node-2 (default: a new one in a temporary directory)")
    args = parser.parse_args(argv)
    if args.round_trips < 1 or args.rounds < 1:
        parser.error("--round-trips and --rounds must be at least 1")
    made = None if args.pki else tempfile.mkdtemp(prefix="parkd-tls-cost-")
    pki = args.pki or make_pki(made, nodes=(1, 2), cameras=(), operators=())
    outcome: dict = {}

    async def run():
        try:
            outcome.update(await measure(pki, args.round_trips, args.rounds))
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addErrback(lambda f: outcome.update(error=f.getErrorMessage())))
    try:
        reactor.run()
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    print(json.dumps(outcome))
    return 1 if "error" in outcome else 0


if __name__ == "__main__":
    sys.exit(main())
