"""The linearizable read rows of ``make bench``: a small HTTP(S) client for parkd's read API.

The same client style as etcd's rows (``etcd_client.py``): one keep-alive
HTTP/1.1 connection per client, a point read of one record (``GET
/api/v1/lots/<id>``, linearizable: parkd's default), each answer checked.
Rows: read latency p50/p99 from the leader and from a follower (one client,
sequential), and reads/s with 16 concurrent clients (threads, one
connection each) on the leader.  HTTPS as deployed (reads are public, so no
client certificate), or plain HTTP on an ``insecure`` cluster.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time

from parkd.camera.loadgen import percentile
from parkd.config import Config

PATH = "/api/v1/lots/{lot}"
READS = 1000  # sequential reads per series
WARM = 50
READ_CLIENTS = 16
SERIES_SECONDS = 30.0  # bound on each sequential series


class ReadError(Exception):
    """A read answered something else than the lot asked for."""


FAILURES = (ReadError, OSError, http.client.HTTPException)


class ReadClient:
    """One keep-alive connection to one node's HTTP port (HTTPS when the config has ``[tls]``)."""

    def __init__(self, config: Config, node_id: int, lot: str, timeout: float = 5.0):
        address = config.member(node_id).http
        self.path = PATH.format(lot=lot)
        self.lot = lot
        if config.tls is not None:
            context = ssl.create_default_context(cafile=config.tls.ca)
            self.connection = http.client.HTTPSConnection(address.host, address.port, timeout=timeout, context=context)
        else:
            self.connection = http.client.HTTPConnection(address.host, address.port, timeout=timeout)

    def read(self) -> dict:
        """One linearizable read of the lot; ReadError unless it answers 200 with that lot."""
        try:
            self.connection.request("GET", self.path)
            response = self.connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()  # the next read opens a new connection
            raise
        if response.status != 200:
            raise ReadError(f"HTTP {response.status}: {body[:120]!r}")
        doc = json.loads(body)
        if doc.get("id") != self.lot:
            raise ReadError(f"asked for lot {self.lot!r}, got {body[:120]!r}")
        return doc

    def close(self) -> None:
        self.connection.close()


def sequential(client: ReadClient, count: int, seconds: float = SERIES_SECONDS) -> tuple[list[float], int]:
    """Up to ``count`` reads one after the other (or ``seconds``): latencies (ms) of those that worked, failures."""
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        try:
            client.read()
        except FAILURES:
            failures += 1
            continue
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies, failures


def read_latency(config: Config, node_id: int, lot: str, count: int = READS) -> dict:
    """p50/p99 (ms) of ``count`` sequential linearizable reads from one node, one connection."""
    client = ReadClient(config, node_id, lot)
    try:
        sequential(client, WARM)
        latencies, failures = sequential(client, count)
    finally:
        client.close()
    return {"p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "reads": len(latencies), "errors": failures}  # fmt: skip


def read_throughput(config: Config, node_id: int, lot: str, clients: int = READ_CLIENTS, seconds: float = 10.0) -> dict:
    """Reads/s of ``clients`` threads, one keep-alive connection each, reading from one node for ``seconds``."""
    lock = threading.Lock()
    latencies, failures = [], [0]
    start = threading.Barrier(clients + 1)

    def reader():
        client = ReadClient(config, node_id, lot)
        mine, failed = [], 0
        try:
            sequential(client, 5)  # connect (and handshake) before the clock starts
        finally:
            start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() <= deadline:
            began = time.perf_counter()
            try:
                client.read()
            except FAILURES:
                failed += 1
            else:
                if time.monotonic() <= deadline:
                    mine.append((time.perf_counter() - began) * 1000)
        client.close()
        with lock:
            latencies.extend(mine)
            failures[0] += failed

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join(timeout=seconds + 15)
    with lock:
        done = list(latencies)
    return {"rate": round(len(done) / seconds, 1), "clients": clients, "p50_ms": round(percentile(done, 50), 2),
            "p99_ms": round(percentile(done, 99), 2), "errors": failures[0]}  # fmt: skip
