"""A small etcd v3 client for the benchmark: JSON gateway over one keep-alive HTTP connection.

etcd 3.4 serves its gRPC API as JSON on the client port (``POST /v3/kv/put``,
``/v3/kv/range``, ``/v3/maintenance/status``); keys and values travel in
base64, 64-bit integers as strings.  The request bodies and the parsing of the
replies are plain functions, so they are tested without an etcd
(tests/test_bench_etcd.py).  Only loopback addresses are accepted.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import ssl

PUT = "/v3/kv/put"
RANGE = "/v3/kv/range"
STATUS = "/v3/maintenance/status"


class EtcdError(Exception):
    """etcd (or its gateway) refused a request, or answered something that is not a reply."""


def put_body(key: bytes, value: bytes) -> dict:
    return {"key": _b64(key), "value": _b64(value)}


def range_body(key: bytes, serializable: bool = False) -> dict:
    """One key; ``serializable=False`` asks for a linearizable read (etcd's default)."""
    return {"key": _b64(key), "serializable": serializable}


def parse_reply(status: int, body: bytes) -> dict:
    """The reply as a dict; EtcdError for an HTTP error, a gRPC error body or a body that is not JSON."""
    try:
        reply = json.loads(body)
    except ValueError:
        raise EtcdError(f"HTTP {status}: not JSON: {body[:80]!r}") from None
    if not isinstance(reply, dict):
        raise EtcdError(f"HTTP {status}: not a JSON object: {body[:80]!r}")
    if status != 200 or "error" in reply:
        raise EtcdError(f"HTTP {status}: {reply.get('message') or reply.get('error') or 'no message'}")
    return reply


def range_value(reply: dict, key: bytes) -> bytes | None:
    """The value stored under ``key`` in a range reply, None when the key does not exist."""
    for kv in reply.get("kvs", ()):
        if base64.b64decode(kv.get("key", "")) == key:
            return base64.b64decode(kv.get("value", ""))  # an empty value is left out of the JSON
    return None


def is_leader(status_reply: dict) -> bool:
    """Whether the member that answered this status request is the leader."""
    member = status_reply.get("header", {}).get("member_id")
    leader = status_reply.get("leader")
    return bool(member) and leader not in (None, "0") and member == leader


def loopback_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:2379"`` -> ``("127.0.0.1", 2379)``; ValueError for anything but a loopback IP and a port."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {address!r} (expected 127.0.0.1:PORT)")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"bad address {address!r}: the benchmark talks to loopback addresses only")
    return host, int(port)


class Client:
    """One keep-alive HTTP/1.1 connection to one etcd member's client port (``tls``: HTTPS with that context)."""

    def __init__(self, address: str, timeout: float = 5.0, tls: ssl.SSLContext | None = None):
        host, port = loopback_address(address)
        self.address = address
        if tls is None:
            self.connection = http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            self.connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)

    def call(self, path: str, body: dict) -> dict:
        try:
            self.connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = self.connection.getresponse()
            return parse_reply(response.status, response.read())
        except (OSError, http.client.HTTPException):
            self.connection.close()  # the next call opens a new connection
            raise

    def put(self, key: bytes, value: bytes) -> dict:
        return self.call(PUT, put_body(key, value))

    def get(self, key: bytes) -> bytes | None:
        """A linearizable read of one key."""
        return range_value(self.call(RANGE, range_body(key)), key)

    def status(self) -> dict:
        return self.call(STATUS, {})

    def close(self) -> None:
        self.connection.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
