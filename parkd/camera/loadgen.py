"""Load generator: many cameras in one process, using the real camera client.

Each simulated camera is a :class:`~parkd.camera.client.CameraClient` with its
own connection, speaking the real client protocol (Hello, pipelined frames,
acks, failover), but with an in-memory outbox: a benchmark measures the
cluster, not the camera's disk.

    python -m parkd.camera.loadgen --cluster HOST:PORT,... --cameras 16 --window 64 --duration 10
    python -m parkd.camera.loadgen --cluster ... --cameras 10000 --interval 10 --duration 60

Prints one JSON line: acked frames, frames/s, latency percentiles (ms), errors.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import OrderedDict

from parkd.camera.client import CameraClient
from parkd.camera.outbox import Frame
from parkd.config import parse_cluster_addresses
from parkd.daemon import raise_file_limit

PAYLOAD = b"x" * 64


class MemoryOutbox:
    """The Outbox interface without a disk (benchmarks only)."""

    def __init__(self, on_ack):
        self.client = None  # the CameraClient sending from this outbox
        self.frames: OrderedDict[int, Frame] = OrderedDict()
        self.next_seq = 1
        self.on_ack = on_ack
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
        return self.frames.pop(seq, None) is not None

    def counter(self, key: str) -> int:
        return self.next_seq if key == "next_seq" else self.dropped


class LoadGenerator:
    def __init__(self, reactor, cluster, cameras: int, window: int, interval: float | None, lots: list[str],
                 first_camera: int = 100000, seed: int = 1):  # fmt: skip
        self.reactor = reactor
        self.interval = interval
        self.window = window
        self.latencies: list[float] = []
        self.acked = 0
        self.measuring = False
        rng = random.Random(seed)
        self.clients = []
        for i in range(cameras):
            outbox = MemoryOutbox(self._acked)
            client = CameraClient(
                first_camera + i, lots[i % len(lots)], outbox, cluster, reactor,
                ack_timeout=5.0, max_message_bytes=16 << 20, window=window, rng=random.Random(rng.random()),
            )  # fmt: skip
            client.log = _QUIET
            outbox.client = client
            self.clients.append(client)

    def _acked(self, client, frame: Frame) -> None:
        now = time.time()
        if self.measuring:
            self.acked += 1
            self.latencies.append(now - frame.captured_at)
        if self.interval is None:  # saturation: keep every window full
            self._capture(client, now)

    def start(self) -> None:
        for client in self.clients:
            client.start()
            if self.interval is None:
                for _ in range(self.window):
                    self._capture(client, time.time())
            else:
                offset = random.random() * self.interval
                self.reactor.callLater(offset, self._tick, client)

    def _capture(self, client, now) -> None:
        client.outbox.add(PAYLOAD, now)
        client.frame_added()

    def _tick(self, client) -> None:
        self._capture(client, time.time())
        self.reactor.callLater(self.interval, self._tick, client)

    def errors(self) -> int:
        return sum(c.outbox.dropped for c in self.clients)


class _Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


_QUIET = _Quiet()


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
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--lots", default="north,south,east")
    parser.add_argument("--first-camera", type=int, default=100000)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    raise_file_limit()
    gen = LoadGenerator(reactor, parse_cluster_addresses(args.cluster), args.cameras, args.window, args.interval,
                        args.lots.split(","), first_camera=args.first_camera)  # fmt: skip
    result = {}

    def begin():
        gen.measuring = True
        result["started"] = time.time()
        reactor.callLater(args.duration, finish)

    def finish():
        gen.measuring = False
        elapsed = time.time() - result["started"]
        ms = [x * 1000 for x in gen.latencies]
        result.update(
            cameras=args.cameras, window=args.window, interval=args.interval, seconds=round(elapsed, 2),
            acked=gen.acked, rate=round(gen.acked / elapsed, 1),
            p50_ms=round(percentile(ms, 50), 2), p99_ms=round(percentile(ms, 99), 2),
            max_ms=round(max(ms, default=float("nan")), 2), errors=gen.errors(),
            connected=sum(c.proto is not None for c in gen.clients),
        )  # fmt: skip
        del result["started"]
        reactor.stop()

    reactor.callWhenRunning(gen.start)
    reactor.callLater(args.warmup, begin)
    reactor.run()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
