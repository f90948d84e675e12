"""Load generator: many cameras in one process, using the real camera client.

Each simulated camera is a :class:`~parkd.camera.client.CameraClient` with its
own connection, speaking the real client protocol (Hello, pipelined frames,
acks, failover), but with an in-memory outbox: a benchmark measures the
cluster, not the camera's disk.

    python -m parkd.camera.loadgen --cluster HOST:PORT,... --cameras 16 --window 64 --duration 10
    python -m parkd.camera.loadgen --cluster ... --cameras 10000 --interval 10 --ramp 5 --duration 60

Prints one JSON line.  What is counted: every frame *captured* inside the
measurement window, from its capture time to its ack (``p50_ms``, ``p99_ms``,
``max_ms``; ``rate`` = those acked / window length).  The window opens after
``--warmup`` once every camera is connected and no frame older than
``--settle`` waits in any outbox (``warmup_s``, ``settled``); after it closes,
acks of its frames are awaited for up to ``--drain`` s.  ``errors`` = frames
refused by a node during the whole run + frames of the window never acked
(``refused``, ``unacked``); ``reconnects`` = connection attempts beyond one per
camera (failovers, ack timeouts), ``client_events`` why; ``gen_cpu`` (share of one
core) and ``gen_lag_p99_ms`` (how late a 50 ms timer fires) show whether the
generator itself kept up during the window.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections import Counter, OrderedDict

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory

from parkd.camera.client import CameraClient
from parkd.camera.outbox import Frame, new_incarnation
from parkd.config import parse_cluster_addresses
from parkd.daemon import raise_file_limit

PAYLOAD = b"x" * 64
LAG_PROBE = 0.05  # seconds between two probes of the generator's own event-loop lag


class MemoryOutbox:
    """The Outbox interface without a disk (benchmarks only).

    Each one is a new state dir, so it has a new incarnation (CONTRACT §9): a run
    that starts its cameras at seq 1 again is not taken for a retry of an earlier run.
    """

    def __init__(self, on_ack, on_discard=None, rng: random.Random | None = None):
        self.client = None  # the CameraClient sending from this outbox
        self.incarnation = new_incarnation(rng or random.SystemRandom())
        self.frames: OrderedDict[int, Frame] = OrderedDict()
        self.next_seq = 1
        self.on_ack = on_ack
        self.on_discard = on_discard or (lambda frame: None)
        self.dropped = 0

    def add(self, payload: bytes, captured_at: float) -> Frame:
        frame = Frame(self.next_seq, captured_at, payload)
        self.frames[frame.seq] = frame
        self.next_seq += 1
        return frame

    def pending(self, after: int = 0, limit: int | None = None) -> list[Frame]:
        out = []
        for seq, frame in self.frames.items():
            if seq > after:
                out.append(frame)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def ack(self, seq: int) -> bool:
        frame = self.frames.pop(seq, None)
        if frame is not None:
            self.on_ack(self.client, frame)
        return frame is not None

    def discard(self, seq: int) -> bool:
        self.dropped += 1
        frame = self.frames.pop(seq, None)
        if frame is not None:
            self.on_discard(frame)
        return frame is not None

    def counter(self, key: str) -> int:
        return self.next_seq if key == "next_seq" else self.dropped


class _OneConnection(ClientFactory):
    """``connectTCP`` for one camera connection, quietly (no "Starting factory" log line)."""

    noisy = False

    def __init__(self, proto, result: Deferred):
        self.proto, self.result = proto, result

    def buildProtocol(self, addr):
        self.result.callback(self.proto)
        return self.proto

    def clientConnectionFailed(self, connector, reason):
        self.result.errback(reason)


class LoadGenerator:
    """``cameras`` CameraClients in one reactor, and what they measure.

    Cameras start (connect, then capture every ``interval`` s from a random
    phase) spread uniformly over ``ramp`` seconds.  Latency is measured from a
    frame's capture time to its ack, for every frame *captured* inside the
    measurement window ``[window_start, window_end)``, however late its ack
    comes; frames of the window still unacknowledged when the run ends are
    reported as ``unacked``.
    """

    def __init__(self, reactor, cluster, cameras: int, window: int, interval: float | None, lots: list[str],
                 first_camera: int = 100000, seed: int = 1, ramp: float = 0.0):  # fmt: skip
        self.reactor = reactor
        self.interval = interval
        self.window = window
        self.ramp = ramp
        self.latencies: list[float] = []
        self.window_start: float | None = None
        self.window_end: float | None = None
        self.captured = 0  # frames captured inside the window
        self.acked = 0  # ... and acknowledged
        self.refused = 0  # ... and refused by a node (dropped from the outbox)
        self.connects = 0  # connection attempts (beyond one per camera: failovers and timeouts)
        self.rng = random.Random(seed)
        self.log = _CountingLog()
        direct = all(isIPAddress(a.host) or isIPv6Address(a.host) for a in cluster)
        self.clients = []
        for i in range(cameras):
            outbox = MemoryOutbox(self._acked, self._refused)
            client = CameraClient(
                first_camera + i, lots[i % len(lots)], outbox, cluster, reactor,
                ack_timeout=5.0, max_message_bytes=16 << 20, window=window, rng=random.Random(self.rng.random()),
                connect=self._connect_direct if direct else None,
            )  # fmt: skip
            client.log = self.log
            if not direct:
                client._connect = self._counting(client._connect)
            outbox.client = client
            self.clients.append(client)

    # ------------------------------------------------------------ connections

    def _connect_direct(self, address, proto) -> Deferred:
        """What HostnameEndpoint does, minus a name lookup in a thread per connection for an IP literal."""
        self.connects += 1
        result = Deferred()
        self.reactor.connectTCP(address.host, address.port, _OneConnection(proto, result), timeout=5)
        return result

    def _counting(self, connect):
        def counted(address, proto):
            self.connects += 1
            return connect(address, proto)

        return counted

    def connected(self) -> int:
        return sum(c.proto is not None for c in self.clients)

    # ------------------------------------------------------------ frames

    def in_window(self, captured_at: float) -> bool:
        return (
            self.window_start is not None
            and captured_at >= self.window_start
            and (self.window_end is None or captured_at < self.window_end)
        )

    def _acked(self, client, frame: Frame) -> None:
        now = time.time()
        if self.in_window(frame.captured_at):
            self.acked += 1
            self.latencies.append(now - frame.captured_at)
        if self.interval is None and self.window_end is None:  # saturation: keep every window full
            self._capture(client, now)

    def _refused(self, frame: Frame) -> None:
        if self.in_window(frame.captured_at):
            self.refused += 1

    def start(self) -> None:
        for client in self.clients:
            delay = self.rng.uniform(0, self.ramp) if self.ramp > 0 else 0
            if delay:
                self.reactor.callLater(delay, self._start, client)
            else:
                self._start(client)

    def _start(self, client) -> None:
        client.start()
        if self.interval is None:
            for _ in range(self.window):
                self._capture(client, time.time())
        else:
            self.reactor.callLater(self.rng.uniform(0, self.interval), self._tick, client)

    def _capture(self, client, now) -> None:
        if self.in_window(now):
            self.captured += 1
        client.outbox.add(PAYLOAD, now)
        client.frame_added()

    def _tick(self, client) -> None:
        self._capture(client, time.time())
        self.reactor.callLater(self.interval, self._tick, client)

    def oldest_unacked_age(self, now: float) -> float:
        """Age of the oldest frame waiting in any outbox (0 if none): the backlog."""
        oldest = min((next(iter(c.outbox.frames.values())).captured_at for c in self.clients if c.outbox.frames),
                     default=now)  # fmt: skip
        return now - oldest

    def unacked_in_window(self) -> int:
        return sum(1 for c in self.clients for f in c.outbox.frames.values() if self.in_window(f.captured_at))

    def errors(self) -> int:
        return sum(c.outbox.dropped for c in self.clients)


class _CountingLog:
    """Stands in for the clients' Logger: counts what they would log instead of formatting it.

    Info and debug lines (connecting, connected) are not counted; a warning or
    error is counted under its format, and the reason a camera left its node
    (ack timeout, redirect, unavailable) under its first words.
    """

    def __init__(self):
        self.counts: Counter[str] = Counter()

    def debug(self, format, **kw):
        pass

    def info(self, format, **kw):
        if "why" in kw:
            self.counts["left node: " + " ".join(kw["why"].split()[:3])] += 1
        elif "error" in kw:
            self.counts["cannot reach: " + kw["error"][:40]] += 1
        elif "reason" in kw:
            self.counts["lost its node"] += 1

    def warn(self, format, **kw):
        self.counts[format] += 1

    error = critical = failure = warn


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="parkd-loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", required=True, help="client addresses host:port,...")
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--window", type=int, default=64, help="frames in flight per camera")
    parser.add_argument("--interval", type=float, help="seconds between frames per camera (default: saturate)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the measurement window")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds before the window opens at the earliest (it opens once every camera is "
                             "connected and no frame older than --settle waits, or after --max-warmup)")
    parser.add_argument("--ramp", type=float, default=0.0, help="start the cameras spread over this many seconds")
    parser.add_argument("--settle", type=float, default=1.0, help="backlog age (s) below which the window may open")
    parser.add_argument("--max-warmup", type=float, default=120.0)
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds after the window to wait for acks of frames captured in it")
    parser.add_argument("--lots", default="north,south,east")
    parser.add_argument("--first-camera", type=int, default=100000)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    raise_file_limit()
    gen = LoadGenerator(reactor, parse_cluster_addresses(args.cluster), args.cameras, args.window, args.interval,
                        args.lots.split(","), first_camera=args.first_camera, ramp=args.ramp)  # fmt: skip
    gc.freeze()  # the clients, see maybe_begin()
    began = time.time()
    result = {}
    lags: list[float] = []  # how late a 50 ms timer fires during the window: is the generator keeping up?

    def probe(expected):
        now = time.time()
        if gen.window_start is not None and gen.window_end is None:
            lags.append(now - expected)
        if gen.window_end is None:
            reactor.callLater(LAG_PROBE, probe, now + LAG_PROBE)

    def maybe_begin():
        now = time.time()
        connected = gen.connected()
        backlog = gen.oldest_unacked_age(now) if args.interval is not None else 0.0
        settled = connected == args.cameras and backlog < args.settle
        if settled or now - began >= args.max_warmup:
            result.update(warmup_s=round(now - began, 2), settled=settled, connected_at_start=connected,
                          backlog_at_start_s=round(backlog, 3))  # fmt: skip
            # Whatever lives now (10,000 clients and their connections) lives to the end:
            # keep it out of the cyclic GC, whose full collections paused this
            # process 100-300 ms at a time, ack reading included.
            gc.collect()
            gc.freeze()
            gen.window_start = time.time()
            result["cpu_start"] = time.process_time()
            reactor.callLater(args.duration, end_window)
        else:
            reactor.callLater(0.5, maybe_begin)

    def end_window():
        gen.window_end = time.time()
        result["connected"] = gen.connected()  # at the end of the window
        result["gen_cpu"] = round((time.process_time() - result.pop("cpu_start")) / (gen.window_end - gen.window_start), 3)
        deadline = gen.window_end + args.drain
        drain(deadline)

    def drain(deadline):
        if gen.acked + gen.refused < gen.captured and time.time() < deadline:
            reactor.callLater(0.1, drain, deadline)
        else:
            finish()

    def finish():
        window = gen.window_end - gen.window_start
        ms = [x * 1000 for x in gen.latencies]
        unacked = gen.unacked_in_window()
        result.update(
            cameras=args.cameras, window=args.window, interval=args.interval, seconds=round(window, 2),
            captured=gen.captured, acked=gen.acked, rate=round(gen.acked / window, 1),
            p50_ms=round(percentile(ms, 50), 2), p99_ms=round(percentile(ms, 99), 2),
            max_ms=round(max(ms, default=float("nan")), 2), errors=gen.errors() + unacked,
            refused=gen.errors(), unacked=unacked, reconnects=gen.connects - args.cameras,
            gen_lag_p99_ms=round(percentile(lags, 99) * 1000, 2), client_events=dict(gen.log.counts),
        )  # fmt: skip
        reactor.stop()

    reactor.callWhenRunning(gen.start)
    reactor.callLater(args.warmup, maybe_begin)
    reactor.callLater(LAG_PROBE, probe, time.time() + LAG_PROBE)
    reactor.run()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
