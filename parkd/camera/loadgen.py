"""Load generator: many cameras in one process, using the real camera client.

Each simulated camera is a :class:`~parkd.camera.client.CameraClient` with its
own connection, speaking the real client protocol (Hello, pipelined frames,
acks, failover), but with an in-memory outbox: a benchmark measures the
cluster, not the camera's disk.

    python -m parkd.camera.loadgen --cluster HOST:PORT,... --cameras 16 --window 64 --duration 10
    python -m parkd.camera.loadgen --cluster ... --cameras 10000 --interval 10 --ramp 5 --duration 60
    python -m parkd.camera.loadgen --cluster ... --pki run/bench-pki ...   # TLS, camera-<id>'s certificate each

Prints one JSON line.  What is counted: every frame *captured* inside the
measurement window, from its capture time to its ack (``p50_ms``, ``p99_ms``,
``max_ms``; ``rate`` = those acked / window length).  The window opens after
``--warmup`` once every camera is connected, no frame older than
``--settle`` waits in any outbox and (TLS) every camera has made its first round
of standby sessions (``warmup_s``, ``settled``; a fleet that has run for
``--standby-spread`` s has made them), 2 s after the live objects are frozen
out of the garbage collector (``freeze_ms``: a stall there would put a burst of
captures into the window); after it closes,
acks of its frames are awaited for up to ``--drain`` s.  ``errors`` = frames
refused by a node during the whole run + frames of the window never acked
(``refused``, ``unacked``); ``reconnects`` = connection attempts beyond one per
camera (failovers, ack timeouts), ``client_events`` why; ``gen_cpu`` (share of one
core) and ``gen_lag_p99_ms`` (how late a 50 ms timer fires) show whether the
generator itself kept up during the window.

With ``--pki DIR`` every camera speaks TLS and presents its own certificate
(``camera-<id>``, ids from ``--first-camera``; :class:`~parkd.trust.fleet.CameraFleet`:
one client context for all).  With ``--storm`` the run goes on after the
window: it prints the figures so far as a JSON line with ``"storm_ready":
true`` and waits (up to ``--storm-wait`` s) for SIGUSR1, sent when the caller
kills a node.  At that moment every camera captures one frame; the ``storm``
figures are the time from the signal until 99 % and 100 % of the cameras have
that frame acked (``t99_s``, ``t100_s``; null if not reached within
``--storm-wait``), with the connection attempts made meanwhile and how many
of the moved cameras resumed a TLS session (``resumed``: each camera keeps a
standby session with every other node, made within ``--standby-spread`` s of
its connecting).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import signal
import sys
import time
from collections import Counter

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint

from parkd.camera.client import CameraClient
from parkd.camera.dialing import CountedEndpoint, DirectEndpoint
from parkd.camera.memory_outbox import MemoryOutbox
from parkd.camera.outbox import Frame
from parkd.camera.standby import STANDBY_SPREAD
from parkd.camera.storm import Storm
from parkd.config import parse_cluster_addresses
from parkd.startup import raise_file_limit
from parkd.ratelimit import RateLimitedLog

PAYLOAD = b"x" * 64
TLS_FAILED = "{count} more failed TLS handshakes"
LAG_PROBE = 0.05  # seconds between two probes of the generator's own event-loop lag
AFTER_FREEZE = 2.0  # seconds from the freeze before the window to the window, see open_window()


def freeze_survivors() -> None:
    """Whatever lives now (the clients and their connections) lives to the end of the
    run: keep it out of the cyclic GC, whose full collections paused this process
    100-300 ms at a time, ack reading included.  No collection first, as a node's
    :func:`~parkd.node.gcpauses.settle_after_start`: with 10,000 cameras it stalled
    this process 628 ms (the burst :meth:`LoadGenerator.open_window` describes),
    and the garbage it would free is a few MB kept for one run."""
    gc.freeze()


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
                 first_camera: int = 100000, seed: int = 1, ramp: float = 0.0, pki: str | None = None,
                 standby_spread: float = 0.0):  # fmt: skip
        """``pki``: a ``parkctl pki`` directory with every camera's certificate (TLS), or None (plaintext).

        ``standby_spread``: each camera's standby sessions (:mod:`parkd.camera.standby`) start within
        this many seconds of its connecting (default 0: none, unlike a camera daemon).

        TrustError if a camera's files are missing or unusable.
        """
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
        self.storm: Storm | None = None
        self.cluster = cluster
        self.log = _CountingLog()
        fleet = None
        if pki is not None:
            from parkd.trust.fleet import CameraFleet

            refusals = RateLimitedLog(self.log, TLS_FAILED, burst=1 << 30, clock=reactor)  # count every one
            fleet = CameraFleet(pki, range(first_camera, first_camera + cameras), clock=reactor, refusals=refusals)
        direct = all(isIPAddress(a.host) or isIPv6Address(a.host) for a in cluster)
        self.clients = []
        for i in range(cameras):
            outbox = MemoryOutbox(self._acked, self._refused)
            client = CameraClient(
                first_camera + i, lots[i % len(lots)], outbox, cluster, reactor,
                ack_timeout=5.0, max_message_bytes=16 << 20, window=window, rng=random.Random(self.rng.random()),
                endpoint=self._direct_endpoint if direct else self._hostname_endpoint,
                trust=None if fleet is None else fleet.camera(first_camera + i), standby_spread=standby_spread,
            )  # fmt: skip
            client.log = self.log
            outbox.client = client
            self.clients.append(client)

    # ------------------------------------------------------------ connections

    def _direct_endpoint(self, address) -> DirectEndpoint:
        return DirectEndpoint(self, address)

    def _hostname_endpoint(self, address) -> CountedEndpoint:
        return CountedEndpoint(self, HostnameEndpoint(self.reactor, address.host, address.port, timeout=5))

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
        if self.storm is not None:
            self.storm.acked(client, frame, now)
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
            first = self.rng.uniform(0, self.interval)
            self.reactor.callLater(first, self._tick, client, self.reactor.seconds() + first)

    def _capture(self, client, now) -> None:
        if self.in_window(now):
            self.captured += 1
        client.outbox.add(PAYLOAD, now)
        client.frame_added()

    def _tick(self, client, due: float) -> None:
        """One capture; the camera's next one is due an interval after this one was *due*, not after it ran.

        Each real camera keeps its own clock.  Timed from when they ran, the timers
        that a stall of this process (its collection at the window's start, a busy
        second) made run together would stay together for the rest of the run: the
        same burst every interval (the 10,000-camera row's first 0.4 s of every 10 s
        carried 2-3 times the mean rate, and the slow frames).  A tick missed while
        stalled is skipped, as a camera does not capture twice to catch up.
        """
        self._capture(client, time.time())
        now = self.reactor.seconds()
        due += self.interval
        while due <= now:
            due += self.interval
        self.reactor.callLater(due - now, self._tick, client, due)

    def open_window(self, opened, freeze=freeze_survivors) -> float:
        """Freeze, then open the measurement window ``AFTER_FREEZE`` s later and call ``opened()``.

        A stall of this process here makes the captures due meanwhile run together:
        a burst of this generator's making (a fleet's cameras each keep their own
        clock).  When a full collection came before the freeze, the 10,000-camera
        window took that burst (4 times the mean capture rate in its first 0.2 s),
        and every one of its slowest 1 % of frames was captured in its first second
        (p99 139 ms; 42 ms without that second).  Returns how long the freeze took (s).
        """
        started = time.time()
        freeze()
        took = time.time() - started

        def open_():
            self.window_start = time.time()
            opened()

        self.reactor.callLater(AFTER_FREEZE, open_)
        return took

    def oldest_unacked_age(self, now: float) -> float:
        """Age of the oldest frame waiting in any outbox (0 if none): the backlog."""
        oldest = min((next(iter(c.outbox.frames.values())).captured_at for c in self.clients if c.outbox.frames),
                     default=now)  # fmt: skip
        return now - oldest

    def unacked_in_window(self) -> int:
        return sum(1 for c in self.clients for f in c.outbox.frames.values() if self.in_window(f.captured_at))

    def errors(self) -> int:
        return sum(c.outbox.dropped for c in self.clients)

    def standby_pending(self) -> int:
        """Cameras yet to finish their first round of standby sessions."""
        return sum(1 for c in self.clients if c.standby is not None and c.standby.rounds == 0)

    def camera_connects(self) -> int:
        """The cameras' connection attempts, leaving out those only for standby TLS sessions."""
        return self.connects - sum(c.standby.dials for c in self.clients if c.standby is not None)

    def begin_storm(self, started: float) -> Storm:
        """A node was just killed (at ``started``): every camera captures a frame now, and the storm is timed."""
        self.storm = Storm(self, started)
        for client in self.clients:
            self.storm.mark(client, client.outbox.add(PAYLOAD, started))
            client.frame_added()
        return self.storm


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

    def emit(self, level, format, **kw):
        """A failed TLS handshake (the fleet's refusals): counted under its reason."""
        if "problem" in kw:
            self.counts["TLS: " + kw["problem"][:60]] += 1
        else:
            self.warn(format, **kw)


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
    parser.add_argument("--pki", metavar="DIR",
                        help="speak TLS, each camera with its certificate camera-<id>.pem/.key from DIR")
    parser.add_argument("--storm", action="store_true",
                        help="after the window, wait for SIGUSR1 (a node killed) and time the recovery")
    parser.add_argument("--standby-spread", type=float, default=0.0,
                        help="TLS: each camera's standby sessions with the other nodes start within this many "
                             "seconds of its connecting, and the window waits for them [default: 0, none; a "
                             f"camera daemon's default is {STANDBY_SPREAD:g}]")
    parser.add_argument("--storm-wait", type=float, default=60.0,
                        help="seconds to wait for SIGUSR1, then for every camera to be acked again")
    args = parser.parse_args(argv)
    if args.storm and args.interval is None:
        parser.error("--storm needs --interval")
    from twisted.internet import reactor

    from parkd.trust import TrustError

    raise_file_limit()
    try:
        gen = LoadGenerator(reactor, parse_cluster_addresses(args.cluster), args.cameras, args.window, args.interval,
                            args.lots.split(","), first_camera=args.first_camera, ramp=args.ramp, pki=args.pki,
                            standby_spread=args.standby_spread)  # fmt: skip
    except TrustError as e:
        print(f"parkd-loadgen: {e}", file=sys.stderr)
        return 1
    freeze_survivors()  # the clients
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
        standby = gen.standby_pending()
        settled = connected == args.cameras and backlog < args.settle and not standby
        if settled or now - began >= args.max_warmup:
            result.update(warmup_s=round(now - began, 2), settled=settled, connected_at_start=connected,
                          backlog_at_start_s=round(backlog, 3), standby_pending_at_start=standby)  # fmt: skip
            result["freeze_ms"] = round(gen.open_window(window_opened) * 1000, 1)
        else:
            reactor.callLater(0.5, maybe_begin)

    def window_opened():
        result["cpu_start"] = time.process_time()
        reactor.callLater(args.duration, end_window)

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
            refused=gen.errors(), unacked=unacked, reconnects=gen.camera_connects() - args.cameras,
            gen_lag_p99_ms=round(percentile(lags, 99) * 1000, 2), client_events=dict(gen.log.counts),
        )  # fmt: skip
        if args.storm:
            wait_for_storm()
        else:
            reactor.stop()

    def wait_for_storm():
        """Tell the caller we are ready; SIGUSR1 (a node just killed) starts the storm, or time runs out."""
        deadline = reactor.callLater(args.storm_wait, storm_over, "no SIGUSR1 within --storm-wait")

        def signalled(signum, frame):
            started = time.time()  # now, not when the reactor gets to it
            reactor.callFromThread(storm_begins, started, deadline)

        signal.signal(signal.SIGUSR1, signalled)
        print(json.dumps({"storm_ready": True, **result}), flush=True)

    def storm_begins(started, deadline):
        if gen.storm is not None or not deadline.active():
            return
        deadline.cancel()
        result["storm_cpu_start"] = time.process_time()
        gen.begin_storm(started)
        watch_storm(reactor.callLater(args.storm_wait, storm_over, None))

    def watch_storm(deadline):
        if gen.storm.done():
            deadline.cancel()
            storm_over(None)
        elif deadline.active():
            reactor.callLater(0.05, watch_storm, deadline)

    def storm_over(error):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if gen.storm is None:
            result["storm"] = {"error": error}
        else:
            seconds = time.time() - gen.storm.started
            cpu = (time.process_time() - result.pop("storm_cpu_start")) / max(seconds, 1e-9)
            result["storm"] = {**gen.storm.result(), "gen_cpu": round(cpu, 3)}
        reactor.stop()

    reactor.callWhenRunning(gen.start)
    reactor.callLater(args.warmup, maybe_begin)
    reactor.callLater(LAG_PROBE, probe, time.time() + LAG_PROBE)
    reactor.run()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
